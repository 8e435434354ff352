//! How records are encoded, and how records of the previous format version still read.
//!
//! Version 3 made kinds and attributes data: a session's counts are indexed by the state's
//! kind numbers ([`Meta::kinds`]) and it carries attribute states. A version-2 store still
//! opens: its checkpoint record names the four classic kinds, and each of its session records
//! is read in the old layout. Session records of version 3 start with a zero byte (a version-2
//! record starts with its non-zero list length: empty lists are never stored), so a store that
//! was upgraded in place — old records beside new ones — reads record by record.
//!
//! Version 4 moved state out of memory: the checkpoint record counts open sessions and keeps
//! the dedup cutoff, ids are stored one key each and sessions are indexed by end time. Session
//! records are unchanged (still marked `[0, 3]`); a version-3 store is migrated when it is
//! opened (`state::rocksdb::migrate`).

use super::{Counters, Meta, STATE_VERSION};
use crate::event::{CheckpointId, SourcePosition};
use crate::extract::catalog::CLASSIC_KINDS;
use crate::session::{Counts, Session};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The first format version this build still reads.
pub const OLDEST_READABLE: u32 = 2;

const SESSION_MARK: [u8; 2] = [0, 3];

/// Appends the encoding of one customer's open sessions to `out` (a checkpoint encodes all of
/// its records into one buffer).
///
/// # Errors
/// Never for these types; postcard's error is passed on.
pub fn encode_sessions_into(s: &[Session], mut out: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
    out.extend_from_slice(&SESSION_MARK);
    postcard::to_extend(s, out)
}

/// Decodes one customer's open sessions, of this version or the previous one.
///
/// # Errors
/// The record is neither.
pub fn decode_sessions(v: &[u8]) -> Result<Vec<Session>, postcard::Error> {
    match v.strip_prefix(&SESSION_MARK[..]) {
        Some(rest) => postcard::from_bytes(rest),
        None if v.first() == Some(&0) => Err(postcard::Error::DeserializeBadEncoding),
        None => {
            let old: Vec<SessionV2> = postcard::from_bytes(v)?;
            Ok(old.into_iter().map(SessionV2::upgrade).collect())
        }
    }
}

/// Decodes the checkpoint record of this version or the previous one.
///
/// # Errors
/// `None`: the record is of a version this build cannot read; `Some`: it does not decode.
pub fn decode_meta(v: &[u8]) -> Result<Meta, Option<postcard::Error>> {
    let (version, _) = postcard::take_from_bytes::<u32>(v).map_err(Some)?;
    match version {
        STATE_VERSION => postcard::from_bytes(v).map_err(Some),
        3 => postcard::from_bytes::<MetaV3>(v).map(MetaV3::upgrade).map_err(Some),
        2 => postcard::from_bytes::<MetaV2>(v).map(MetaV2::upgrade).map_err(Some),
        _ => Err(None),
    }
}

/// The version of a checkpoint record, if it has one.
#[must_use]
pub fn version_of(v: &[u8]) -> Option<u32> {
    postcard::take_from_bytes::<u32>(v).ok().map(|(n, _)| n)
}

/// The kind names a version-2 state counted, by their index in it.
fn classic_kinds() -> Vec<String> {
    CLASSIC_KINDS.iter().map(|k| k.0.to_owned()).collect()
}

#[derive(Deserialize, Serialize)]
struct CountsV2 {
    events: u64,
    page_views: u64,
    subscribe_hovers: u64,
    subscribe_clicks: u64,
    support_calls: u64,
}

#[derive(Deserialize, Serialize)]
struct SessionV2 {
    start: i64,
    end: i64,
    counts: CountsV2,
    schema_sets: (u32, u32),
}

impl SessionV2 {
    fn upgrade(self) -> Session {
        let c = self.counts;
        // The order of `CLASSIC_KINDS`, which `classic_kinds` numbers.
        let kinds = [c.page_views, c.subscribe_hovers, c.subscribe_clicks, c.support_calls].into();
        Session {
            start: self.start,
            end: self.end,
            counts: Counts { events: c.events, kinds },
            schema_sets: self.schema_sets,
            attrs: Vec::new(),
        }
    }
}

#[derive(Deserialize, Serialize)]
struct CountersV2 {
    lines: u64,
    accepted: u64,
    duplicates: u64,
    dead_lettered: BTreeMap<String, u64>,
    sessions: u64,
}

#[derive(Deserialize, Serialize)]
struct MetaV2 {
    version: u32,
    checkpoint: CheckpointId,
    position: SourcePosition,
    max_time: Option<i64>,
    counters: CountersV2,
    inputs: Vec<String>,
    settings: String,
    finished: bool,
    schema_sets: Vec<String>,
}

impl MetaV2 {
    fn upgrade(self) -> Meta {
        let c = self.counters;
        Meta {
            version: STATE_VERSION,
            checkpoint: self.checkpoint,
            position: self.position,
            max_time: self.max_time,
            counters: Counters {
                lines: c.lines,
                accepted: c.accepted,
                duplicates: c.duplicates,
                dead_lettered: c.dead_lettered,
                sessions: c.sessions,
                truncated_values: 0,
            },
            inputs: self.inputs,
            settings: self.settings,
            finished: self.finished,
            schema_sets: self.schema_sets,
            kinds: classic_kinds(),
            attributes: Vec::new(),
            open: (0, 0),
            forgotten_before: None,
        }
    }
}

/// Version 3's checkpoint record: no open counts (the store counts them when it migrates) and
/// no dedup cutoff (its ids were deleted by whole hours, so every stored id counts).
#[derive(Deserialize, Serialize)]
pub(crate) struct MetaV3 {
    pub(crate) version: u32,
    pub(crate) checkpoint: CheckpointId,
    pub(crate) position: SourcePosition,
    pub(crate) max_time: Option<i64>,
    pub(crate) counters: Counters,
    pub(crate) inputs: Vec<String>,
    pub(crate) settings: String,
    pub(crate) finished: bool,
    pub(crate) schema_sets: Vec<String>,
    pub(crate) kinds: Vec<String>,
    pub(crate) attributes: Vec<String>,
}

impl MetaV3 {
    fn upgrade(self) -> Meta {
        Meta {
            version: STATE_VERSION,
            checkpoint: self.checkpoint,
            position: self.position,
            max_time: self.max_time,
            counters: self.counters,
            inputs: self.inputs,
            settings: self.settings,
            finished: self.finished,
            schema_sets: self.schema_sets,
            kinds: self.kinds,
            attributes: self.attributes,
            open: (0, 0),
            forgotten_before: None,
        }
    }
}

/// A version-2 checkpoint record and one customer's version-2 sessions (one session of 9
/// events: 1 page view, 2 hovers, 3 clicks), as that version wrote them.
#[cfg(test)]
pub(crate) fn version_2_records() -> (Vec<u8>, Vec<u8>) {
    let meta = MetaV2 {
        version: 2,
        checkpoint: 7,
        position: SourcePosition::default(),
        max_time: Some(5),
        counters: CountersV2 {
            lines: 3,
            accepted: 2,
            duplicates: 1,
            dead_lettered: BTreeMap::new(),
            sessions: 0,
        },
        inputs: vec![],
        settings: "s".into(),
        finished: false,
        schema_sets: vec!["web@1".into()],
    };
    let sessions = vec![SessionV2 {
        start: 1,
        end: 2,
        counts: CountsV2 {
            events: 9,
            page_views: 1,
            subscribe_hovers: 2,
            subscribe_clicks: 3,
            support_calls: 0,
        },
        schema_sets: (0, 0),
    }];
    (
        postcard::to_stdvec(&meta).unwrap_or_default(),
        postcard::to_stdvec(&sessions).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::attrs::{AttrState, Value};

    #[test]
    fn version_2_records_read_as_the_classic_kinds() {
        let (meta, sessions) = version_2_records();
        let s = decode_sessions(&sessions).unwrap();
        assert_eq!(s[0].counts, Counts { events: 9, kinds: vec![1, 2, 3, 0].into() });
        let m = decode_meta(&meta).unwrap();
        assert_eq!((m.version, m.checkpoint, m.counters.lines), (STATE_VERSION, 7, 3));
        assert_eq!(
            m.kinds,
            ["page_view", "subscribe_hover", "subscribe_click", "support_call"],
            "numbered as the old record's fields"
        );
    }

    #[test]
    fn version_3_records_round_trip_and_unknown_versions_are_named() {
        let s = vec![Session {
            start: 1,
            end: 2,
            counts: Counts { events: 2, kinds: vec![0, 0, 0, 0, 2].into() },
            schema_sets: (0, 0),
            attrs: vec![AttrState::Unset, AttrState::At(1, Value::Str("ios".into()))],
        }];
        let bytes = encode_sessions_into(&s, Vec::new()).unwrap();
        assert_eq!(bytes[0], 0);
        assert_eq!(decode_sessions(&bytes).unwrap(), s);
        assert!(decode_sessions(&[0, 9, 1]).is_err());
        let future = postcard::to_stdvec(&(99u32, 0u64)).unwrap();
        assert!(matches!(decode_meta(&future), Err(None)));
    }
}
