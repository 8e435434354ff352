use super::item::{CHECKPOINT, ENDING_HASH_KEY, STARTING_HASH_KEY};
use super::*;

#[test]
fn names_are_derived_from_the_expressions() {
    let n = names(&["SET #leaseCounter = :next REMOVE #leaseOwner", HELD_BY_ME]);
    let mut got: Vec<_> = n.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    got.sort_unstable();
    assert_eq!(got, [("#leaseCounter", "leaseCounter"), ("#leaseOwner", "leaseOwner")]);
}

#[test]
fn items_round_trip_in_kcl_schema() {
    let lease = Lease {
        owner: Some("w1".into()),
        counter: 7,
        checkpoint_sub: 3,
        owner_switches: 2,
        parents: vec!["shardId-000000000000".into(), "shardId-000000000001".into()],
        children: vec!["shardId-000000000003".into()],
        hash_range: Some((0, u128::MAX)),
        ..Lease::new(
            "shardId-000000000002",
            "49590338271490256608559692538361571095921575989136588898",
        )
    };
    let item = to_item(&lease);
    let mut attrs: Vec<_> = item.keys().map(String::as_str).collect();
    attrs.sort_unstable();
    assert_eq!(
        attrs,
        [
            "checkpoint",
            "checkpointSubSequenceNumber",
            "childShardIds",
            "endingHashKey",
            "entityType",
            "leaseCounter",
            "leaseKey",
            "leaseOwner",
            "ownerSwitchesSinceCheckpoint",
            "parentShardId",
            "startingHashKey",
        ]
    );
    assert_eq!(item[ENDING_HASH_KEY], s("340282366920938463463374607431768211455"));
    let table = LeaseTable::new(client(), "t");
    assert_eq!(table.parse(&item).unwrap(), Some(lease));
}

#[test]
fn malformed_items_name_key_and_attribute() {
    let table = LeaseTable::new(client(), "t");
    let mut item = to_item(&Lease::new("shardId-1", TRIM_HORIZON));
    item.insert(LEASE_COUNTER.into(), s("7"));
    let e = table.parse(&item).unwrap_err();
    assert!(
        matches!(&e, LeaseError::Malformed { key, attribute: "leaseCounter", .. } if key == "shardId-1"),
        "{e}"
    );
    item.insert(LEASE_COUNTER.into(), number(7));
    item.insert(STARTING_HASH_KEY.into(), s("12"));
    let e = table.parse(&item).unwrap_err();
    assert!(matches!(e, LeaseError::Malformed { attribute: "endingHashKey", .. }), "{e}");
    item.remove(CHECKPOINT);
    item.remove(STARTING_HASH_KEY);
    let e = table.parse(&item).unwrap_err();
    assert!(matches!(e, LeaseError::Malformed { attribute: "checkpoint", .. }), "{e}");
}

#[test]
fn other_kcl_entities_are_skipped_and_untagged_items_are_leases() {
    let table = LeaseTable::new(client(), "t");
    let mut item = to_item(&Lease::new("shardId-1", LATEST));
    item.remove(ENTITY_TYPE);
    assert!(table.parse(&item).unwrap().is_some());
    item.insert(ENTITY_TYPE.into(), s("LEADER"));
    assert_eq!(table.parse(&item).unwrap(), None);
}

fn client() -> Client {
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .build();
    Client::from_conf(conf)
}
