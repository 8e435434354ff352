//! A lease as a `DynamoDB` item: KCL's attribute names and types, both ways.

use super::{Lease, LeaseError, LeaseTable};
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::{BTreeSet, HashMap};

// KCL's attribute names (DynamoDBLeaseSerializer), spelled exactly as KCL spells them.
pub(super) const LEASE_KEY: &str = "leaseKey";
pub(super) const LEASE_OWNER: &str = "leaseOwner";
pub(super) const LEASE_COUNTER: &str = "leaseCounter";
pub(super) const CHECKPOINT: &str = "checkpoint";
pub(super) const CHECKPOINT_SUB: &str = "checkpointSubSequenceNumber";
pub(super) const OWNER_SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
pub(super) const PARENTS: &str = "parentShardId";
pub(super) const CHILDREN: &str = "childShardIds";
pub(super) const STARTING_HASH_KEY: &str = "startingHashKey";
pub(super) const ENDING_HASH_KEY: &str = "endingHashKey";
/// KCL 3.5 tags every item, because its lease table may also hold coordinator entities; an
/// item without the tag is a lease (written by an older KCL).
pub(super) const ENTITY_TYPE: &str = "entityType";
pub(super) const ENTITY_LEASE: &str = "LEASE";

impl LeaseTable {
    /// The lease an item holds; `None` for KCL's other entity types.
    pub(super) fn parse(
        &self,
        item: &HashMap<String, AttributeValue>,
    ) -> Result<Option<Lease>, LeaseError> {
        let key = match item.get(LEASE_KEY) {
            Some(AttributeValue::S(k)) => k.clone(),
            // The table's hash key is a string, so this is a table that is not a lease table.
            _ => return Err(self.malformed("?", LEASE_KEY, "is not a string (S)".to_owned())),
        };
        let field = Field { table: self, key: &key, item };
        if field.string(ENTITY_TYPE)?.is_some_and(|t| t != ENTITY_LEASE) {
            return Ok(None);
        }
        let hash_range = match (field.string(STARTING_HASH_KEY)?, field.string(ENDING_HASH_KEY)?) {
            (Some(start), Some(end)) => {
                let start = field.hash_key(STARTING_HASH_KEY, start)?;
                let end = field.hash_key(ENDING_HASH_KEY, end)?;
                if start > end {
                    return Err(self.malformed(
                        &key,
                        ENDING_HASH_KEY,
                        format!("is below {STARTING_HASH_KEY}"),
                    ));
                }
                Some((start, end))
            }
            (None, None) => None,
            (Some(_), None) => return Err(self.malformed(&key, ENDING_HASH_KEY, missing())),
            (None, Some(_)) => return Err(self.malformed(&key, STARTING_HASH_KEY, missing())),
        };
        let mut parents = field.string_set(PARENTS)?;
        parents.sort();
        let mut children = field.string_set(CHILDREN)?;
        children.sort();
        Ok(Some(Lease {
            owner: field.string(LEASE_OWNER)?.map(str::to_owned),
            counter: field.number(LEASE_COUNTER)?.ok_or_else(|| field.error(LEASE_COUNTER))?,
            checkpoint: field
                .string(CHECKPOINT)?
                .ok_or_else(|| field.error(CHECKPOINT))?
                .to_owned(),
            // KCL always writes these two; older or hand-made items read as zero, as KCL reads
            // a missing sub-sequence number.
            checkpoint_sub: field.number(CHECKPOINT_SUB)?.unwrap_or(0),
            owner_switches: field.number(OWNER_SWITCHES)?.unwrap_or(0),
            parents,
            children,
            hash_range,
            key,
        }))
    }
}

/// One item's attributes, read with the lease's key at hand for errors.
pub(super) struct Field<'a> {
    table: &'a LeaseTable,
    key: &'a str,
    item: &'a HashMap<String, AttributeValue>,
}

impl<'a> Field<'a> {
    fn error(&self, attribute: &'static str) -> LeaseError {
        self.table.malformed(self.key, attribute, missing())
    }

    fn wrong_type(&self, attribute: &'static str, want: &str) -> LeaseError {
        self.table.malformed(self.key, attribute, format!("is not {want}"))
    }

    fn string(&self, attribute: &'static str) -> Result<Option<&'a str>, LeaseError> {
        match self.item.get(attribute) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v)),
            Some(_) => Err(self.wrong_type(attribute, "a string (S)")),
        }
    }

    fn number(&self, attribute: &'static str) -> Result<Option<u64>, LeaseError> {
        match self.item.get(attribute) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(v)) => v.parse().map(Some).map_err(|_| {
                self.table.malformed(self.key, attribute, format!("{v:?} is not a count"))
            }),
            Some(_) => Err(self.wrong_type(attribute, "a number (N)")),
        }
    }

    fn string_set(&self, attribute: &'static str) -> Result<Vec<String>, LeaseError> {
        match self.item.get(attribute) {
            None | Some(AttributeValue::Null(_)) => Ok(Vec::new()),
            Some(AttributeValue::Ss(v)) => Ok(v.clone()),
            Some(_) => Err(self.wrong_type(attribute, "a string set (SS)")),
        }
    }

    /// KCL writes hash keys as decimal strings (`BigInteger.toString`).
    fn hash_key(&self, attribute: &'static str, value: &str) -> Result<u128, LeaseError> {
        value.parse().map_err(|_| {
            self.table.malformed(self.key, attribute, format!("{value:?} is not a 128-bit key"))
        })
    }
}

pub(super) fn missing() -> String {
    "is missing".to_owned()
}

pub(super) fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

pub(super) fn number(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The item KCL's serializer writes for `lease` (`toDynamoRecord`): optional attributes are
/// left out rather than written empty, since `DynamoDB` sets cannot be empty.
pub(super) fn to_item(lease: &Lease) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::from([
        (LEASE_KEY.to_owned(), s(&lease.key)),
        (LEASE_COUNTER.to_owned(), number(lease.counter)),
        (OWNER_SWITCHES.to_owned(), number(lease.owner_switches)),
        (CHECKPOINT.to_owned(), s(&lease.checkpoint)),
        (CHECKPOINT_SUB.to_owned(), number(lease.checkpoint_sub)),
        (ENTITY_TYPE.to_owned(), s(ENTITY_LEASE)),
    ]);
    if let Some(owner) = &lease.owner {
        item.insert(LEASE_OWNER.to_owned(), s(owner));
    }
    let set = |v: &[String]| {
        AttributeValue::Ss(v.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect())
    };
    if !lease.parents.is_empty() {
        item.insert(PARENTS.to_owned(), set(&lease.parents));
    }
    if !lease.children.is_empty() {
        item.insert(CHILDREN.to_owned(), set(&lease.children));
    }
    if let Some((start, end)) = lease.hash_range {
        item.insert(STARTING_HASH_KEY.to_owned(), s(&start.to_string()));
        item.insert(ENDING_HASH_KEY.to_owned(), s(&end.to_string()));
    }
    item
}

/// The expression attribute names `expressions` use. Every `#name` stands for the attribute
/// `name`: placeholders spare us `DynamoDB`'s reserved words, and `DynamoDB` refuses a name map
/// that holds names no expression uses, so the map is derived from the expressions.
pub(super) fn names(expressions: &[&str]) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for expression in expressions {
        for (i, _) in expression.match_indices('#') {
            let rest = &expression[i + 1..];
            let end = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
            let name = &rest[..end];
            names.insert(format!("#{name}"), name.to_owned());
        }
    }
    names
}
