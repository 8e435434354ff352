//! Aggregate: closed sessions → per-customer rows, the product's output.

use crate::extract::catalog::{Aggregate, AttrType, Catalog};
use crate::session::attrs::Value;
use crate::session::{ClosedSession, KindCounts};
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::sync::Arc;

/// The columns a schema set gives session rows beyond the fixed ones, with the state numbers
/// their values are kept under.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowLayout {
    /// Count columns: (column, state kind number), in the set's order.
    pub kinds: Vec<(Arc<str>, u32)>,
    /// Attribute columns: (column, column type, state attribute number, fold).
    pub attrs: Vec<(Arc<str>, AttrType, u32, Aggregate)>,
}

impl RowLayout {
    /// The layout of `catalog`, whose kinds and attributes the state numbers as given.
    #[must_use]
    pub fn new(catalog: &Catalog, kind_ids: &[u32], attr_ids: &[u32]) -> RowLayout {
        RowLayout {
            kinds: catalog
                .kinds
                .iter()
                .zip(kind_ids)
                .map(|(k, &id)| (Arc::clone(&k.column), id))
                .collect(),
            attrs: catalog
                .attrs
                .iter()
                .zip(attr_ids)
                .map(|(a, &id)| (Arc::clone(&a.name), a.column_type(), id, a.aggregate))
                .collect(),
        }
    }

    /// The classic layout: four counts, numbered as listed, no attribute.
    #[must_use]
    pub fn classic() -> RowLayout {
        RowLayout::new(&Catalog::classic(), &[0, 1, 2, 3], &[])
    }
}

/// One output row: a customer's session and what happened in it.
///
/// As JSON its keys are, in order: the fixed columns up to `event_count`, one count per kind
/// of the schema set in force when the session closed, one column per attribute (null when no
/// event had a value), and `schema_sets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Customer id.
    pub customer_id: Box<str>,
    /// First event, UTC epoch ms.
    pub session_start: i64,
    /// Last event, UTC epoch ms.
    pub session_end: i64,
    /// `session_end - session_start`.
    pub duration_ms: i64,
    /// Events in the session.
    pub event_count: u64,
    /// Events per kind, in the order of `layout.kinds` (inline up to four kinds).
    pub counts: KindCounts,
    /// Attribute values, in the order of `layout.attrs`.
    pub attrs: Vec<Option<Value>>,
    /// The columns.
    pub layout: Arc<RowLayout>,
    /// The schema sets (`name@version,…`) that extracted the session's events: one, or the
    /// first and the last when the set was reloaded during the session.
    pub schema_sets: Vec<String>,
}

impl SessionRow {
    /// The row of a closed session in `layout`; `sets` names the schema sets by index.
    #[must_use]
    pub fn fold(c: ClosedSession, sets: &[String], layout: &Arc<RowLayout>) -> SessionRow {
        let s = c.session;
        let name = |i: u32| sets.get(i as usize).cloned().unwrap_or_else(|| format!("#{i}"));
        let (first, last) = s.schema_sets;
        let mut schema_sets = vec![name(first)];
        if last != first {
            schema_sets.push(name(last));
        }
        SessionRow {
            customer_id: Box::from(&*c.customer_id),
            session_start: s.start,
            session_end: s.end,
            duration_ms: s.end - s.start,
            event_count: s.counts.events,
            counts: layout.kinds.iter().map(|&(_, k)| s.counts.of(k)).collect(),
            attrs: layout
                .attrs
                .iter()
                .map(|&(_, _, id, agg)| {
                    s.attrs.get(id as usize).cloned().unwrap_or_default().output(agg)
                })
                .collect(),
            layout: Arc::clone(layout),
            schema_sets,
        }
    }

    /// The count in column `column`, if the row has that column.
    #[must_use]
    pub fn count(&self, column: &str) -> Option<u64> {
        let i = self.layout.kinds.iter().position(|(c, _)| &**c == column)?;
        self.counts.get(i).copied()
    }

    /// The UTC date of the session start, `YYYY-MM-DD`: the output partition.
    #[must_use]
    pub fn date(&self) -> String {
        utc_date(self.session_start)
    }
}

/// An attribute value as a JSON cell (state keeps its own, tagged encoding).
struct Cell<'a>(&'a Value);

impl Serialize for Cell<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Str(v) => s.serialize_str(v),
            Value::Int(v) => s.serialize_i64(*v),
            Value::Num(v) => s.serialize_f64(*v),
            Value::Bool(v) => s.serialize_bool(*v),
        }
    }
}

impl Serialize for SessionRow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let l = &self.layout;
        let mut m = s.serialize_map(Some(6 + l.kinds.len() + l.attrs.len()))?;
        m.serialize_entry("customer_id", &self.customer_id)?;
        m.serialize_entry("session_start", &self.session_start)?;
        m.serialize_entry("session_end", &self.session_end)?;
        m.serialize_entry("duration_ms", &self.duration_ms)?;
        m.serialize_entry("event_count", &self.event_count)?;
        for ((column, _), n) in l.kinds.iter().zip(&self.counts) {
            m.serialize_entry(&**column, n)?;
        }
        for ((column, ..), v) in l.attrs.iter().zip(&self.attrs) {
            m.serialize_entry(&**column, &v.as_ref().map(Cell))?;
        }
        m.serialize_entry("schema_sets", &self.schema_sets)?;
        m.end()
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a UTC epoch-millisecond time.
#[must_use]
pub fn utc_datetime(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{}T{:02}:{:02}:{:02}Z", utc_date(ms), secs / 3600, secs / 60 % 60, secs % 60)
}

/// `YYYY-MM-DD` of a UTC epoch-millisecond time (proleptic Gregorian).
#[must_use]
pub fn utc_date(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Counts, Session};

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_709_510_400_000), "2024-03-04");
        assert_eq!(utc_date(1_709_510_399_999), "2024-03-03");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
        assert_eq!(utc_date(4_102_444_799_999), "2099-12-31");
        assert_eq!(utc_datetime(1_709_510_399_999), "2024-03-03T23:59:59Z");
        assert_eq!(utc_datetime(1_709_514_061_000), "2024-03-04T01:01:01Z");
    }

    #[test]
    fn fold_and_shape() {
        let c = ClosedSession {
            customer_id: "433120".into(),
            session: Session {
                start: 10,
                end: 25,
                counts: Counts { events: 3, kinds: vec![1, 1, 1].into() },
                schema_sets: (0, 1),
                attrs: Vec::new(),
            },
        };
        let row =
            SessionRow::fold(c, &["web@1".into(), "web@2".into()], &Arc::new(RowLayout::classic()));
        assert_eq!(
            serde_json::to_string(&row).unwrap(),
            r#"{"customer_id":"433120","session_start":10,"session_end":25,"duration_ms":15,"event_count":3,"page_views":1,"subscribe_hovers":1,"subscribe_clicks":1,"support_calls":0,"schema_sets":["web@1","web@2"]}"#
        );
    }
}
