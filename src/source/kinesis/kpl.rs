//! KPL aggregation: one Kinesis record may carry many user records. [`deaggregate`] splits it the
//! way KCL's `AggregatorUtil.deaggregate` (KCL 3.5.1) does, so a stream written by the KPL reads
//! here as a KCL consumer would read it: the same user records, the same sub-sequence numbers, the
//! same hash-key-range filter.
//!
//! The format (awslabs/amazon-kinesis-producer `aggregation-format.md`): [`MAGIC`], a proto2
//! `AggregatedRecord`, then the 16-byte MD5 of the protobuf bytes.
//!
//! Where KCL would quietly lose data on a malformed aggregate (it logs, keeps the user records it
//! had emitted before the fault and drops the rest), this module calls the whole record
//! [`Deaggregated::Plain`] instead: the caller then handles its bytes as one record, which fails
//! to decode and becomes a dead letter, whole and visible.
//!
//! Pure and synchronous. Garbage input never panics.

use std::ops::RangeInclusive;

use md5::{Digest as _, Md5};

/// The KPL aggregate magic.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Length of the MD5 trailer.
const DIGEST_LEN: usize = 16;

/// A hash key: MD5 of the partition key read as a 128-bit big-endian number, or the explicit hash
/// key.
///
/// This is how Kinesis maps a partition key onto a shard's hash-key range, and how KCL recomputes
/// it for user records that carry no explicit hash key.
#[must_use]
pub fn hash_key_of(partition_key: &[u8]) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key).into())
}

/// Parses an explicit hash key (decimal string, 0..2^128-1); None if malformed.
///
/// KCL parses it with `new BigInteger(text)`, which takes leading zeros and a leading `+`; so does
/// this. Text that `BigInteger` reads as a number outside 0..2^128-1 (`-1`, 2^128) is `None` here:
/// KCL would drop such an aggregate as out of range, but no producer can have put it where it lies
/// (Kinesis refuses such hash keys), so we would rather see it as a dead letter. Two spellings
/// `BigInteger` also takes are refused, as no producer writes them: `-0` and non-ASCII digits.
#[must_use]
pub fn parse_hash_key(text: &str) -> Option<u128> {
    text.parse().ok()
}

/// One user record of a Kinesis record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord<'a> {
    /// The user record's bytes, borrowed from the Kinesis record.
    pub data: &'a [u8],
    /// Its partition key, from the aggregate's table.
    pub partition_key: &'a str,
    /// Its effective hash key: the explicit one if it has one, else [`hash_key_of`] the partition
    /// key.
    pub hash_key: u128,
    /// Its sub-sequence number: its index in the aggregate. All user records of an aggregate share
    /// the Kinesis record's sequence number, so (sequence, sub) is a user record's position.
    pub sub: u32,
}

/// What a Kinesis record holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Deaggregated<'a> {
    /// Not an aggregate (or not a valid one: bad MD5, unparsable protobuf, too short): the record's
    /// bytes as they are, one user record.
    Plain,
    /// The user records of an aggregate, sub-sequence numbers 0..n-1.
    ///
    /// May be empty: a valid aggregate with no records holds no user records. KCL then hands
    /// nothing to the processor; the caller must still count the Kinesis record (and move its
    /// position past it), so that it is not lost without a trace.
    Aggregate(Vec<UserRecord<'a>>),
    /// A valid aggregate with at least one user record outside the shard's hash-key range:
    /// dropped whole, as KCL drops it (the KPL re-puts such records on the right shard, so this
    /// copy is a duplicate). Holds how many user records it had.
    WrongShard(u32),
}

/// De-aggregates `data` exactly as KCL's `AggregatorUtil.deaggregate` does, filtering by the
/// shard's inclusive hash-key range `[start, end]`.
///
/// `data` is an aggregate only if it starts with [`MAGIC`], more than 16 bytes follow, the last 16
/// are the MD5 of the bytes between, and those parse as an `AggregatedRecord`. The outer record's
/// partition key plays no part: as in KCL, only each user record's own hash key is compared with
/// the range.
///
/// Where this departs from KCL, it does so towards [`Deaggregated::Plain`], so that the record
/// reaches the dead letters whole instead of being cut short:
/// - A key-table index out of bounds, or an explicit hash key that is not a number: KCL catches
///   the exception, logs it and keeps only the user records before the faulty one.
/// - An index of 2^32 or more: KCL casts it to `int`, which wraps, and may read another key.
/// - A partition key that is not UTF-8: KCL decodes it lossily and hashes the result.
/// - A protobuf group (wire types 3 and 4, which no producer writes): KCL's parser skips a
///   well-formed one as an unknown field.
///
/// Validity is decided over the whole aggregate before the range is: a malformed aggregate is
/// [`Deaggregated::Plain`] even if an earlier user record lies outside the range (KCL would stop
/// at that record and drop the aggregate without reaching the fault).
#[must_use]
pub fn deaggregate(data: &[u8], range: (u128, u128)) -> Deaggregated<'_> {
    let Some(message) = verified_message(data) else {
        return Deaggregated::Plain;
    };
    match AggregatedRecord::parse(message)
        .and_then(|aggregate| aggregate.user_records(range.0..=range.1))
    {
        Ok(result) => result,
        Err(Invalid) => Deaggregated::Plain,
    }
}

/// The protobuf between the magic and the MD5 trailer, if both are there and the MD5 matches.
fn verified_message(data: &[u8]) -> Option<&[u8]> {
    let body = data.strip_prefix(&MAGIC)?;
    // KCL asks for more than the digest: an empty protobuf behind the magic is no aggregate.
    let message_len = body.len().checked_sub(DIGEST_LEN).filter(|&n| n > 0)?;
    let (message, digest) = body.split_at_checked(message_len)?;
    (Md5::digest(message).as_slice() == digest).then_some(message)
}

/// The bytes are not a valid aggregate; the record is plain.
#[derive(Debug)]
struct Invalid;

/// A proto2 `AggregatedRecord`, its records' key indices not yet checked against the tables
/// (the tables may follow the records on the wire).
struct AggregatedRecord<'a> {
    /// Field 1, `repeated string partition_key_table`.
    partition_keys: Vec<&'a [u8]>,
    /// Field 2, `repeated string explicit_hash_key_table`.
    explicit_hash_keys: Vec<&'a [u8]>,
    /// Field 3, `repeated Record records`.
    records: Vec<Record<'a>>,
}

/// A proto2 `Record` of an aggregate.
struct Record<'a> {
    /// Field 1, `required uint64 partition_key_index`.
    partition_key_index: u64,
    /// Field 2, `optional uint64 explicit_hash_key_index`.
    explicit_hash_key_index: Option<u64>,
    /// Field 3, `required bytes data`.
    data: &'a [u8],
}

impl<'a> AggregatedRecord<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, Invalid> {
        let mut aggregate = Self {
            partition_keys: Vec::new(),
            explicit_hash_keys: Vec::new(),
            records: Vec::new(),
        };
        for field in Fields(bytes) {
            match field? {
                (1, Value::Bytes(key)) => aggregate.partition_keys.push(key),
                (2, Value::Bytes(key)) => aggregate.explicit_hash_keys.push(key),
                (3, Value::Bytes(record)) => aggregate.records.push(Record::parse(record)?),
                // Unknown fields, and known numbers under another wire type: protobuf-java's
                // generated parser matches on the whole tag, so it skips both as unknown.
                _ => {}
            }
        }
        Ok(aggregate)
    }

    /// Resolves every record's keys, then applies KCL's all-or-nothing range filter.
    fn user_records(self, range: RangeInclusive<u128>) -> Result<Deaggregated<'a>, Invalid> {
        let mut users = Vec::with_capacity(self.records.len());
        let mut outside = false;
        for (sub, record) in self.records.iter().enumerate() {
            let partition_key = lookup(&self.partition_keys, record.partition_key_index)?;
            let partition_key = std::str::from_utf8(partition_key).map_err(|_| Invalid)?;
            let hash_key = match record.explicit_hash_key_index {
                Some(index) => std::str::from_utf8(lookup(&self.explicit_hash_keys, index)?)
                    .ok()
                    .and_then(parse_hash_key)
                    .ok_or(Invalid)?,
                None => hash_key_of(partition_key.as_bytes()),
            };
            outside |= !range.contains(&hash_key);
            let sub = u32::try_from(sub).map_err(|_| Invalid)?;
            users.push(UserRecord { data: record.data, partition_key, hash_key, sub });
        }
        Ok(if outside {
            Deaggregated::WrongShard(u32::try_from(users.len()).map_err(|_| Invalid)?)
        } else {
            Deaggregated::Aggregate(users)
        })
    }
}

/// A key table's entry; an index past the end makes the aggregate invalid.
fn lookup<'a>(table: &[&'a [u8]], index: u64) -> Result<&'a [u8], Invalid> {
    usize::try_from(index).ok().and_then(|i| table.get(i)).copied().ok_or(Invalid)
}

impl<'a> Record<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, Invalid> {
        let (mut partition_key_index, mut explicit_hash_key_index, mut data) = (None, None, None);
        for field in Fields(bytes) {
            // A field seen twice: the last one wins, as in every protobuf parser.
            match field? {
                (1, Value::Varint(index)) => partition_key_index = Some(index),
                (2, Value::Varint(index)) => explicit_hash_key_index = Some(index),
                (3, Value::Bytes(bytes)) => data = Some(bytes),
                (4, Value::Bytes(tag)) => check_tag(tag)?,
                _ => {}
            }
        }
        // protobuf-java refuses a message whose required fields are missing, and KCL then passes
        // the record through as it is.
        Ok(Self {
            partition_key_index: partition_key_index.ok_or(Invalid)?,
            explicit_hash_key_index,
            data: data.ok_or(Invalid)?,
        })
    }
}

/// Tags are unused, but a `Tag` must parse and have its required `key` (field 1), because
/// protobuf-java checks nested messages too before it accepts the aggregate.
fn check_tag(bytes: &[u8]) -> Result<(), Invalid> {
    let mut has_key = false;
    for field in Fields(bytes) {
        has_key |= matches!(field?, (1, Value::Bytes(_)));
    }
    if has_key { Ok(()) } else { Err(Invalid) }
}

/// A field's value as the wire carries it.
enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 2.
    Bytes(&'a [u8]),
    /// Wire types 1 and 5: no field here has them, so only their length matters.
    Fixed,
}

/// The fields of a protobuf message, in wire order: `(field number, value)`. Stops at the first
/// malformed one, which makes the whole message invalid.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    /// A base-128 varint of at most 10 bytes. Bits past the 64th are dropped, as protobuf-java
    /// drops them.
    fn varint(&mut self) -> Result<u64, Invalid> {
        let mut value = 0;
        for (i, &byte) in self.0.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                self.0 = self.0.get(i + 1..).ok_or(Invalid)?;
                return Ok(value);
            }
        }
        Err(Invalid)
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], Invalid> {
        let len = usize::try_from(len).map_err(|_| Invalid)?;
        let (head, rest) = self.0.split_at_checked(len).ok_or(Invalid)?;
        self.0 = rest;
        Ok(head)
    }

    fn field(&mut self) -> Result<(u64, Value<'a>), Invalid> {
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 {
            return Err(Invalid);
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => self.take(8).map(|_| Value::Fixed)?,
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(len)?)
            }
            5 => self.take(4).map(|_| Value::Fixed)?,
            // Groups (3, 4) are deprecated and no KPL-format producer writes them; 6 and 7 are
            // not wire types.
            _ => return Err(Invalid),
        };
        Ok((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), Invalid>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            // Nothing after a malformed field can be framed.
            self.0 = &[];
        }
        Some(field)
    }
}

#[cfg(test)]
pub(super) mod tests;
