use super::*;

#[test]
fn hours_come_from_the_firehose_path() {
    let h = parse_time("2026-11-30T13").unwrap();
    assert_eq!(hour_of("fh/2026/11/30/13/stream-1-2026-11-30-13-05-01-ab"), Some(h));
    assert_eq!(hour_of("2026/11/30/13/x.gz"), Some(h));
    assert_eq!(hour_of("fh/2026/11/30/13"), None, "the hour must be a folder");
    assert_eq!(hour_of("fh/2026/13/30/13/x"), None);
    assert_eq!(hour_of("fh/2026/11/30/24/x"), None);
    assert_eq!(hour_of("fh/x.json"), None);
}

#[test]
fn times_parse_in_every_form_given() {
    let h = parse_time("2026-11-30T13").unwrap();
    assert_eq!(parse_time("2026/11/30/13").unwrap(), h);
    assert_eq!(parse_time("2026-11-30T13:00:00Z").unwrap(), h);
    assert_eq!(parse_time("2026-11-30T14:00:00+01:00").unwrap(), h);
    assert_eq!(parse_time("2026-11-30").unwrap(), h - 13 * HOUR_MS);
    assert_eq!(parse_time("2026-11-30T13:30").unwrap(), h + HOUR_MS / 2);
    assert_eq!(parse_time("1970-01-01T00:00:01.5Z"), Ok(1500));
    assert!(parse_time("yesterday").is_err());
    assert!(parse_time("2026-02-30").is_err());
}

#[test]
fn a_window_keeps_the_hours_it_overlaps() {
    let h = parse_time("2026-11-30T13").unwrap();
    let w = Window { from: Some(h + HOUR_MS / 2), to: Some(h + 2 * HOUR_MS) };
    assert!(w.keeps("a/2026/11/30/13/x", None), "13:00-14:00 overlaps from 13:30");
    assert!(w.keeps("a/2026/11/30/14/x", None));
    assert!(!w.keeps("a/2026/11/30/15/x", None), "to is exclusive");
    assert!(!w.keeps("a/2026/11/30/12/x", None));
    assert!(w.keeps("a/x", Some(h + HOUR_MS)), "no hour in the key: its modification time");
    assert!(!w.keeps("a/x", Some(h)));
    assert!(Window::default().keeps("a/x", None));
}

#[test]
fn a_directory_lists_in_key_order_and_a_change_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let put = |rel: &str, body: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    };
    put("2026/11/30/13/b", "{}\n");
    put("2026/11/30/13/a", "{}\n");
    put("2026/11/30/12/z", "{}\n");
    put(".hidden", "x");
    put("_positions/2026/11/30/13/a", "{\"offset\":1}\n");
    put("_SUCCESS", "");
    let arg = dir.path().to_str().unwrap();
    let mut a = list_dir(arg, Window::default()).unwrap();
    let keys: Vec<&str> = a.listing.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(keys, ["2026/11/30/12/z", "2026/11/30/13/a", "2026/11/30/13/b"]);
    let state = tempfile::tempdir().unwrap();
    a.keep_listing(state.path()).unwrap();
    let framing = super::super::Framing::Auto;
    let recorded = a.identity(framing);
    // As a replay has it: its objects taken over.
    assert_eq!(std::mem::take(&mut a.objects).len(), 3);
    assert_eq!(a.identity(framing), recorded);
    assert_eq!(a.changed_since(&recorded, framing, state.path()), None);
    put("2026/11/30/13/a", "{\"changed\":1}\n");
    let b = list_dir(arg, Window::default()).unwrap();
    let why = b.changed_since(&recorded, framing, state.path()).unwrap();
    assert!(why.contains("2026/11/30/13/a was rewritten"), "{why}");
    std::fs::remove_file(dir.path().join("2026/11/30/12/z")).unwrap();
    let c = list_dir(arg, Window::default()).unwrap();
    let why = c.changed_since(&recorded, framing, state.path()).unwrap();
    assert!(why.contains("2026/11/30/12/z is gone"), "{why}");
    let h = parse_time("2026-11-30T13").unwrap();
    let only13 = list_dir(arg, Window { from: Some(h), to: None }).unwrap();
    assert_eq!(only13.objects.len(), 2);
}
