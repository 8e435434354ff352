//! The lease table: one `DynamoDB` item per shard, saying which worker reads it and where it got
//! to.
//!
//! The items are in the Kinesis Client Library's schema (`DynamoDBLeaseSerializer`): the same
//! attribute names and types, and the counter discipline of `DynamoDBLeaseRefresher`. Operators
//! who know KCL recognise the table, and KCL's tooling reads it.
//!
//! Every mutation is conditional on the `leaseCounter` the caller saw, and every mutation
//! increments it. Of two workers acting on the same view, only one succeeds. A counter that
//! keeps moving is also how peers see that a lease is alive (`super::balance`), so no clocks are
//! compared. The lease only decides who *should* read a shard. What makes a stale worker
//! harmless is the conditional commit of its output.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::create_table::CreateTableError;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType, TableStatus,
};
use item::{ENTITY_TYPE, LEASE_COUNTER, LEASE_KEY, names, number, s, to_item};
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;
use thiserror::Error;

/// The checkpoint of a shard read to its end: its children may start.
pub const SHARD_END: &str = "SHARD_END";
/// The checkpoint of a new lease that starts at the oldest record.
pub const TRIM_HORIZON: &str = "TRIM_HORIZON";
/// The checkpoint of a new lease that starts at the newest record.
pub const LATEST: &str = "LATEST";
/// The checkpoint of a new lease that starts at a timestamp.
pub const AT_TIMESTAMP: &str = "AT_TIMESTAMP";

/// How long `ensure` waits for a new table to become usable. `DynamoDB` takes seconds; KCL waits
/// up to 10 minutes, but a worker that cannot start should say so sooner.
const TABLE_WAIT: Duration = Duration::from_mins(2);
const TABLE_POLL: Duration = Duration::from_millis(500);

/// A lease table operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// `DynamoDB` refused the call or could not be reached (after the SDK's own retries).
    #[error("DynamoDB {op} on lease table {table} failed: {message}")]
    Call {
        /// The `DynamoDB` operation.
        op: &'static str,
        /// The table.
        table: String,
        /// `DynamoDB`'s error code and message, or why it could not be reached.
        message: String,
    },
    /// The table does not exist (`ensure` creates it).
    #[error("lease table {table} does not exist")]
    TableMissing {
        /// The table.
        table: String,
    },
    /// The table did not become usable within the bounded wait.
    #[error("lease table {table} is still {status} after {waited:?}")]
    TableNotReady {
        /// The table.
        table: String,
        /// Its last status.
        status: String,
        /// How long `ensure` waited.
        waited: Duration,
    },
    /// An item is not a lease in KCL's schema (written by hand, or by something else).
    #[error("lease {key} in table {table}: attribute {attribute} {problem}")]
    Malformed {
        /// The table.
        table: String,
        /// The item's `leaseKey`.
        key: String,
        /// The offending attribute.
        attribute: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// One shard's lease, as read from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The shard id (`leaseKey`).
    pub key: String,
    /// The worker that holds it (`leaseOwner`); `None` when nobody does.
    pub owner: Option<String>,
    /// Incremented by every change (`leaseCounter`); every change is conditional on it.
    pub counter: u64,
    /// `TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`, `SHARD_END` or a decimal sequence number.
    pub checkpoint: String,
    /// The sub-sequence number within an aggregated record (`checkpointSubSequenceNumber`).
    pub checkpoint_sub: u64,
    /// Owner changes since the last checkpoint (`ownerSwitchesSinceCheckpoint`).
    pub owner_switches: u64,
    /// Parent shards (`parentShardId`), sorted.
    pub parents: Vec<String>,
    /// Child shards (`childShardIds`), sorted; recorded once the shard is finished.
    pub children: Vec<String>,
    /// The shard's hash key range, inclusive (`startingHashKey`, `endingHashKey`).
    pub hash_range: Option<(u128, u128)>,
}

impl Lease {
    /// A new, unowned lease for `key` starting at `checkpoint`, as written by `create`.
    #[must_use]
    pub fn new(key: impl Into<String>, checkpoint: impl Into<String>) -> Self {
        Lease {
            key: key.into(),
            owner: None,
            counter: 0,
            checkpoint: checkpoint.into(),
            checkpoint_sub: 0,
            owner_switches: 0,
            parents: Vec::new(),
            children: Vec::new(),
            hash_range: None,
        }
    }

    /// Whether the shard was read to its end (checkpoint `SHARD_END`).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.checkpoint == SHARD_END
    }

    /// The counter a change writes.
    fn next_counter(&self, table: &str) -> Result<u64, LeaseError> {
        self.counter.checked_add(1).ok_or_else(|| LeaseError::Malformed {
            table: table.to_owned(),
            key: self.key.clone(),
            attribute: LEASE_COUNTER,
            problem: "is at its maximum".to_owned(),
        })
    }
}

/// The lease table in `DynamoDB`.
#[derive(Debug, Clone)]
pub struct LeaseTable {
    client: Client,
    table: String,
}

impl LeaseTable {
    /// The table `table`, through `client`.
    #[must_use]
    pub fn new(client: Client, table: &str) -> Self {
        LeaseTable { client, table: table.to_owned() }
    }

    /// Creates the table if it is missing (on-demand capacity, `leaseKey` a string hash key, as
    /// KCL does) and waits until it is usable, for a bounded time.
    ///
    /// # Errors
    /// `DynamoDB` refuses, or the table is not usable within two minutes.
    pub async fn ensure(&self) -> Result<(), LeaseError> {
        let start = tokio::time::Instant::now();
        loop {
            let status = self.status().await?;
            match &status {
                // UPDATING tables serve reads and writes; KCL treats them as present too.
                Some(TableStatus::Active | TableStatus::Updating) => return Ok(()),
                // Another worker may create it at the same moment; that is fine.
                None => self.create_table().await?,
                Some(_) => {}
            }
            if start.elapsed() >= TABLE_WAIT {
                return Err(LeaseError::TableNotReady {
                    table: self.table.clone(),
                    status: status.map_or_else(|| "missing".to_owned(), |s| s.as_str().to_owned()),
                    waited: start.elapsed(),
                });
            }
            tokio::time::sleep(TABLE_POLL).await;
        }
    }

    /// The table's status; `None` if it does not exist.
    async fn status(&self) -> Result<Option<TableStatus>, LeaseError> {
        match self.client.describe_table().table_name(&self.table).send().await {
            Ok(out) => Ok(Some(
                out.table()
                    .and_then(|t| t.table_status())
                    .cloned()
                    .unwrap_or(TableStatus::Creating),
            )),
            Err(e)
                if e.as_service_error()
                    .is_some_and(DescribeTableError::is_resource_not_found_exception) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.call_error("DescribeTable", &e)),
        }
    }

    async fn create_table(&self) -> Result<(), LeaseError> {
        let build = |e: aws_sdk_dynamodb::error::BuildError| LeaseError::Call {
            op: "CreateTable",
            table: self.table.clone(),
            message: e.to_string(),
        };
        let key = KeySchemaElement::builder()
            .attribute_name(LEASE_KEY)
            .key_type(KeyType::Hash)
            .build()
            .map_err(build)?;
        let def = AttributeDefinition::builder()
            .attribute_name(LEASE_KEY)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(build)?;
        match self
            .client
            .create_table()
            .table_name(&self.table)
            .key_schema(key)
            .attribute_definitions(def)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(CreateTableError::is_resource_in_use_exception) =>
            {
                Ok(())
            }
            Err(e) => Err(self.call_error("CreateTable", &e)),
        }
    }

    /// Every lease in the table (a strongly consistent scan, every page). Items of KCL 3.5's
    /// other entity types are skipped.
    ///
    /// # Errors
    /// `DynamoDB` fails, the table is missing, or an item is not a lease in KCL's schema (KCL
    /// skips such items with an error log; here the caller decides, since a skipped lease is a
    /// shard nobody reads).
    pub async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .into_paginator()
            .send();
        let mut leases = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.call_error("Scan", &e))?;
            for item in page.items() {
                if let Some(lease) = self.parse(item)? {
                    leases.push(lease);
                }
            }
        }
        leases.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(leases)
    }

    /// Creates `lease` unless a lease with its key exists; whether it was created.
    ///
    /// # Errors
    /// `DynamoDB` fails or the table is missing.
    pub async fn create(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(lease)))
            .condition_expression("attribute_not_exists(#leaseKey)")
            .set_expression_attribute_names(Some(names(&["attribute_not_exists(#leaseKey)"])))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(PutItemError::is_conditional_check_failed_exception) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.call_error("PutItem", &e)),
        }
    }

    /// Renews a lease `me` holds, as seen in `lease`: the counter moves on, so peers see it
    /// alive. `None` if it changed since (taken by another worker, or renewed elsewhere).
    ///
    /// # Errors
    /// `DynamoDB` fails or the table is missing.
    pub async fn renew(&self, lease: &Lease, me: &str) -> Result<Option<Lease>, LeaseError> {
        let next = lease.next_counter(&self.table)?;
        let expected = Lease { counter: next, ..lease.clone() };
        self.update(
            &lease.key,
            "SET #leaseCounter = :next",
            HELD_BY_ME,
            vec![(":next", number(next)), (":seen", number(lease.counter)), (":me", s(me))],
            expected,
        )
        .await
    }

    /// Takes `lease` as seen, whoever holds it (an expired or unowned lease, or one stolen from
    /// a busier worker). The owner switch is counted when another worker held it, as KCL
    /// counts it (not when it was unowned). `None` if it changed since.
    ///
    /// # Errors
    /// `DynamoDB` fails or the table is missing.
    pub async fn take(&self, lease: &Lease, me: &str) -> Result<Option<Lease>, LeaseError> {
        let next = lease.next_counter(&self.table)?;
        let switch = lease.owner.as_deref().is_some_and(|o| o != me);
        let mut values =
            vec![(":next", number(next)), (":seen", number(lease.counter)), (":me", s(me))];
        let expression = if switch {
            values.push((":one", number(1)));
            // ADD, as KCL does: it also counts from a missing attribute.
            "SET #leaseOwner = :me, #leaseCounter = :next ADD #ownerSwitchesSinceCheckpoint :one"
        } else {
            "SET #leaseOwner = :me, #leaseCounter = :next"
        };
        let expected = Lease {
            owner: Some(me.to_owned()),
            counter: next,
            owner_switches: lease.owner_switches + u64::from(switch),
            ..lease.clone()
        };
        self.update(&lease.key, expression, "#leaseCounter = :seen", values, expected).await
    }

    /// Records `checkpoint` (with its sub-sequence number) on a lease `me` holds, as seen in
    /// `lease`, and resets the owner switches, as KCL's checkpointer does. `None` if it changed
    /// since.
    ///
    /// # Errors
    /// `DynamoDB` fails or the table is missing.
    pub async fn checkpoint(
        &self,
        lease: &Lease,
        me: &str,
        checkpoint: &str,
        sub: u64,
    ) -> Result<Option<Lease>, LeaseError> {
        let next = lease.next_counter(&self.table)?;
        let expected = Lease {
            counter: next,
            checkpoint: checkpoint.to_owned(),
            checkpoint_sub: sub,
            owner_switches: 0,
            ..lease.clone()
        };
        // KCL's update also clears a pending checkpoint (KCL 2's two-phase checkpoint); this
        // code never writes one, but a table taken over from KCL might hold one.
        self.update(
            &lease.key,
            "SET #checkpoint = :checkpoint, #checkpointSubSequenceNumber = :sub, \
             #ownerSwitchesSinceCheckpoint = :zero, #leaseCounter = :next \
             REMOVE #pendingCheckpoint, #pendingCheckpointSubSequenceNumber, \
             #pendingCheckpointState",
            HELD_BY_ME,
            vec![
                (":checkpoint", s(checkpoint)),
                (":sub", number(sub)),
                (":zero", number(0)),
                (":next", number(next)),
                (":seen", number(lease.counter)),
                (":me", s(me)),
            ],
            expected,
        )
        .await
    }

    /// Gives up a lease `me` holds, as seen in `lease`, so a peer may take it at once instead
    /// of waiting for it to expire. Like KCL's `evictLease`, this removes `leaseOwner` (it does
    /// not write an empty value). Whether it was still ours; pass the latest view (the one the
    /// last renewal returned), since the counter must match too.
    ///
    /// # Errors
    /// `DynamoDB` fails or the table is missing.
    pub async fn release(&self, lease: &Lease, me: &str) -> Result<bool, LeaseError> {
        let next = lease.next_counter(&self.table)?;
        let expected = Lease { owner: None, counter: next, ..lease.clone() };
        let released = self
            .update(
                &lease.key,
                "SET #leaseCounter = :next REMOVE #leaseOwner",
                HELD_BY_ME,
                vec![(":next", number(next)), (":seen", number(lease.counter)), (":me", s(me))],
                expected,
            )
            .await?;
        Ok(released.is_some())
    }

    /// Records the children of a lease `me` holds, as seen in `lease` (a finished shard, so
    /// that whoever cleans up knows what it waits for). `None` if it changed since.
    ///
    /// # Errors
    /// `DynamoDB` fails or the table is missing.
    pub async fn set_children(
        &self,
        lease: &Lease,
        me: &str,
        children: &[String],
    ) -> Result<Option<Lease>, LeaseError> {
        let next = lease.next_counter(&self.table)?;
        // A string set holds each value once and cannot be empty.
        let children: Vec<String> =
            children.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
        let mut values =
            vec![(":next", number(next)), (":seen", number(lease.counter)), (":me", s(me))];
        let expression = if children.is_empty() {
            "SET #leaseCounter = :next REMOVE #childShardIds"
        } else {
            values.push((":children", AttributeValue::Ss(children.clone())));
            "SET #childShardIds = :children, #leaseCounter = :next"
        };
        let expected = Lease { counter: next, children, ..lease.clone() };
        self.update(&lease.key, expression, HELD_BY_ME, values, expected).await
    }

    /// Deletes the lease `key` if its shard is finished (checkpoint `SHARD_END`): a parent
    /// whose children are running. Whether it was deleted.
    ///
    /// # Errors
    /// `DynamoDB` fails or the table is missing.
    pub async fn delete_finished(&self, key: &str) -> Result<bool, LeaseError> {
        let condition = "#checkpoint = :shardEnd";
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(LEASE_KEY, s(key))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names(&[condition])))
            .expression_attribute_values(":shardEnd", s(SHARD_END))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(DeleteItemError::is_conditional_check_failed_exception) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.call_error("DeleteItem", &e)),
        }
    }

    /// One conditional update of the lease `key`: the item as it is afterwards, or `None` when
    /// the condition failed. `expected` is what the item should be afterwards; it stands in
    /// only if `DynamoDB` returns no attributes.
    async fn update(
        &self,
        key: &str,
        expression: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
        expected: Lease,
    ) -> Result<Option<Lease>, LeaseError> {
        let values = values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(LEASE_KEY, s(key))
            .update_expression(expression)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names(&[expression, condition])))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => match out.attributes() {
                Some(item) if !item.is_empty() => match self.parse(item)? {
                    Some(lease) => Ok(Some(lease)),
                    None => Err(self.malformed(key, ENTITY_TYPE, "is not LEASE".to_owned())),
                },
                _ => Ok(Some(expected)),
            },
            Err(e)
                if e.as_service_error()
                    .is_some_and(UpdateItemError::is_conditional_check_failed_exception) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.call_error("UpdateItem", &e)),
        }
    }

    fn malformed(&self, key: &str, attribute: &'static str, problem: String) -> LeaseError {
        LeaseError::Malformed { table: self.table.clone(), key: key.to_owned(), attribute, problem }
    }

    /// A failed call as a `LeaseError`; a missing table is named as such.
    fn call_error<E, R>(&self, op: &'static str, e: &SdkError<E, R>) -> LeaseError
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
        R: fmt::Debug,
    {
        if e.code() == Some("ResourceNotFoundException") {
            return LeaseError::TableMissing { table: self.table.clone() };
        }
        let message = match e {
            SdkError::ServiceError(s) => match (s.err().code(), s.err().message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_owned(),
                _ => DisplayErrorContext(e).to_string(),
            },
            SdkError::DispatchFailure(_) => {
                format!("cannot reach DynamoDB: {}", DisplayErrorContext(e))
            }
            _ => DisplayErrorContext(e).to_string(),
        };
        LeaseError::Call { op, table: self.table.clone(), message }
    }
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (owner {}, counter {}, checkpoint {})",
            self.key,
            self.owner.as_deref().unwrap_or("none"),
            self.counter,
            self.checkpoint
        )
    }
}

/// The condition of every change to a lease the caller holds.
const HELD_BY_ME: &str = "#leaseCounter = :seen AND #leaseOwner = :me";

mod item;

#[cfg(test)]
mod tests;
