//! Migration of older stores, and what the on-demand reads see.

use super::*;
use crate::session::{Counts, SessionChanges};
use crate::state::format::MetaV3;
use crate::state::memory::MemoryStore;

fn raw_put(store: &RocksDbStore, cf: &str, k: &[u8], v: &[u8]) {
    store.db.put_cf(store.db.cf_handle(cf).unwrap(), k, v).unwrap();
}

#[test]
fn a_version_2_store_migrates_and_keeps_its_old_records_beside_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RocksDbStore::open(dir.path()).unwrap();
        let (meta, sessions) = format::version_2_records();
        raw_put(&store, CF_META, META_KEY, &meta);
        raw_put(&store, CF_SESSIONS, b"old", &sessions);
    }
    let mut store = RocksDbStore::open(dir.path()).unwrap();
    let m = store.meta().unwrap().unwrap();
    assert_eq!((m.version, m.checkpoint), (STATE_VERSION, 7));
    assert_eq!(m.kinds[..2], ["page_view".to_owned(), "subscribe_hover".to_owned()]);
    assert_eq!(m.open, (1, 1), "migration counts the open sessions");
    let b = store.backing();
    let old = b.sessions("old").unwrap();
    assert_eq!(old[0].counts, Counts { events: 9, kinds: vec![1, 2, 3, 0].into() });
    let mut closing = Vec::new();
    b.ending_before(i64::MIN, i64::MAX, &mut |_, k, _| {
        closing.push(k.to_owned());
        true
    });
    assert_eq!(closing, ["old"], "migration indexes every customer by end time");
    // A checkpoint of the new version rewrites only what changed: the old record stays.
    let mut new = old[0].clone();
    new.counts.events = 1;
    let batch = CheckpointBatch {
        meta: Some(m),
        sessions: SessionChanges {
            upserts: vec![("new".into(), vec![new].into())],
            ..Default::default()
        },
        ..CheckpointBatch::default()
    };
    store.write_batch(&batch).unwrap();
    drop((store, b));
    let all = RocksDbStore::open(dir.path()).unwrap().read_all().unwrap();
    let events: Vec<(&str, u64)> =
        all.sessions.iter().map(|(c, s)| (&**c, s[0].counts.events)).collect();
    assert_eq!(events, [("new", 1), ("old", 9)]);
}

#[test]
fn a_version_3_store_moves_its_id_segments_to_one_key_each() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf(&opts, dir.path(), ["meta", "sessions", "dedup"]).unwrap();
        let meta = MetaV3 {
            version: 3,
            checkpoint: 4,
            position: crate::event::SourcePosition::default(),
            max_time: Some(9),
            counters: crate::state::Counters::default(),
            inputs: vec![],
            settings: "s".into(),
            finished: false,
            schema_sets: vec![],
            kinds: vec!["page_view".into()],
            attributes: vec![],
        };
        db.put_cf(db.cf_handle("meta").unwrap(), META_KEY, postcard::to_stdvec(&meta).unwrap())
            .unwrap();
        let seg: Vec<(&str, i64)> = vec![("m1", 5), ("m2", 7)];
        let mut key = [0u8; 16];
        key[0] = 0x80;
        db.put_cf(db.cf_handle("dedup").unwrap(), key, postcard::to_stdvec(&seg).unwrap()).unwrap();
    }
    let store = RocksDbStore::open(dir.path()).unwrap();
    let b = store.backing();
    assert_eq!((b.id_time("m1"), b.id_time("m2"), b.id_time("m3")), (Some(5), Some(7), None));
    assert_eq!(store.meta().unwrap().unwrap().checkpoint, 4);
    drop((store, b));
    let names = DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
    assert!(!names.contains(&"dedup".to_owned()), "the old column family is dropped: {names:?}");
}

#[test]
fn forgotten_ids_leave_at_compaction_and_are_never_read_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = RocksDbStore::open(dir.path()).unwrap();
    let mut batch = CheckpointBatch { seq: 1, ..CheckpointBatch::default() };
    batch.dedup.inserts = [("old", 10), ("new", 3 * HOUR_MS)].into_iter().collect();
    store.write_batch(&batch).unwrap();
    let mut meta = crate::state::tests::meta(1);
    meta.forgotten_before = Some(1);
    store.write_batch(&CheckpointBatch { seq: 2, meta: Some(meta), ..Default::default() }).unwrap();
    let ids: Vec<Box<str>> = store.read_all().unwrap().ids.into_iter().map(|(k, _)| k).collect();
    assert_eq!(ids, [Box::from("new")]);
    assert_eq!(store.backing().durable(), 2);
    let cf = store.db.cf_handle(CF_IDS).unwrap();
    store.db.flush_cf(cf).unwrap();
    store.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
    assert!(
        store.db.get_cf(cf, id_key("old")).unwrap().is_none(),
        "dropped by the compaction filter"
    );
    assert!(store.db.get_cf(cf, id_key("new")).unwrap().is_some());
}

#[test]
fn the_index_follows_each_customers_first_session_like_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut real = RocksDbStore::open(dir.path()).unwrap();
    let mut model = MemoryStore::default();
    let s = |start, end| Session {
        start,
        end,
        counts: Counts::default(),
        schema_sets: (0, 0),
        attrs: vec![],
    };
    let batches = [
        SessionChanges {
            upserts: vec![
                ("a".into(), vec![s(1, 5)].into()),
                ("b".into(), vec![s(2, 9), s(50, 60)].into()),
            ],
            ..Default::default()
        },
        SessionChanges {
            upserts: vec![("a".into(), vec![s(1, 20)].into())],
            unindex: vec![("a".into(), 5)],
            ..Default::default()
        },
        SessionChanges {
            upserts: vec![("b".into(), vec![s(50, 60)].into())],
            deletes: vec!["a".into()],
            unindex: vec![("a".into(), 20), ("b".into(), 9)],
        },
    ];
    for (i, sessions) in batches.into_iter().enumerate() {
        let b = CheckpointBatch { seq: i as u64 + 1, sessions, ..Default::default() };
        real.write_batch(&b).unwrap();
        model.write_batch(&b).unwrap();
        let mut got = Vec::new();
        real.backing().ending_before(i64::MIN, i64::MAX, &mut |_, k, _| {
            got.push(Box::from(k));
            true
        });
        let want: Vec<Box<str>> = model.closing().into_iter().map(|(_, k)| k).collect();
        assert_eq!(got, want, "after batch {i}");
        // Each entry carries the customer's sessions as the store holds them.
        real.backing().ending_before(i64::MIN, i64::MAX, &mut |_, k, stored| {
            assert_eq!(stored(), model.sessions(k), "{k} after batch {i}");
            true
        });
    }
    let mut below = Vec::new();
    real.backing().ending_before(0, 60, &mut |_, k, _| {
        below.push(k.to_owned());
        true
    });
    assert!(below.is_empty(), "b's first session ends at 60, not before: {below:?}");
}

#[test]
fn an_index_key_gives_back_its_end_and_keys_order_by_end() {
    let ends = [i64::MIN, -3_600_000, -1, 0, 1, 1_709_510_400_000, i64::MAX];
    for e in ends {
        assert_eq!(closing_end(&closing_key(e, "c")), e);
    }
    let keys: Vec<Vec<u8>> = ends.iter().map(|&e| closing_key(e, "c")).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn the_filters_of_every_store_sharing_a_budget_are_taken_from_its_block_cache() {
    let budget = MemoryBudget::new(64 << 20);
    let quarter = 16 << 20;
    let with_ids = |dir: &Path| {
        let mut store = RocksDbStore::open_with(dir, &budget).unwrap();
        let inserts = (0..100_000).map(|i| (format!("message-{i}"), 0)).collect();
        let b = CheckpointBatch {
            seq: 1,
            dedup: crate::session::dedup::DedupChanges { inserts },
            ..Default::default()
        };
        store.write_batch(&b).unwrap();
        store.db.flush_cf(store.cf(CF_IDS).unwrap()).unwrap();
        store
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = with_ids(d1.path());
    let one = quarter - a.charge_tables();
    // 10 bits a key: 125 kB of filter, and the index beside it.
    assert!((120_000..1_000_000).contains(&one), "one table's filter and index: {one}");
    let b = with_ids(d2.path());
    let two = quarter - b.charge_tables();
    assert!(two > one + 100_000, "the second store's tables are charged too: {one} then {two}");
    drop(b);
    assert_eq!(quarter - a.charge_tables(), one, "a closed store's tables no longer count");
}
