use super::*;
use crate::extract::compat::{self, Severity};

const V1: &str = r#"name = "app"
version = 1
[fields]
message_id = ['$.id']
customer_id = ['$.userId']
event_time = [{ path = '$.ts', format = "epoch" }]
[[classify]]
kind = "subscribe_click"
when = [{ path = '$.evt', equals = "click" }]
"#;

fn candidate(text: &str) -> Candidate {
    Candidate {
        text: text.as_bytes().to_vec(),
        label: "app.toml".into(),
        sample: None,
        force: false,
        reason: None,
        directory: None,
    }
}

fn registered(text: &str) -> Vec<VersionRecord> {
    match plan(&[], candidate(text), "2026-11-27T00:00:00Z").unwrap().0 {
        Registered::New(r) => vec![r],
        Registered::Unchanged(_) => panic!("first version is new"),
    }
}

fn v2(from: &str, to: &str) -> String {
    assert!(V1.contains(from), "{from}");
    V1.replace("version = 1", "version = 2").replace(from, to)
}

fn refused(current: &[VersionRecord], c: Candidate) -> Vec<Finding> {
    match plan(current, c, "now") {
        Err(RegistryError::Incompatible { findings, .. }) => findings,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn keys_round_trip_and_reject_strangers() {
    assert_eq!(parse_key(&key("web", 12)), Some(("web", 12)));
    for k in ["web/v12.json", "web/v000001.toml", "/v000001.json", "web/.tmp-1-web_v000001.json"] {
        assert_eq!(parse_key(k), None, "{k}");
    }
    assert_eq!(parse_ref("web@3").unwrap(), ("web".into(), Some(3)));
    assert_eq!(parse_ref("web").unwrap(), ("web".into(), None));
    assert!(parse_ref("web@x").is_err());
}

#[test]
fn one_name_rule_for_files_references_and_keys() {
    let long = "a".repeat(MAX_NAME);
    for ok in ["web", "page_view", "a-tie", "Web2", "_x", "0", long.as_str()] {
        assert!(valid_name(ok), "{ok}");
    }
    let too_long = "a".repeat(MAX_NAME + 1);
    for bad in ["", "..", ".", "../web", "web/x", "web%2Fx", "-x", "a b", "wéb", too_long.as_str()]
    {
        assert!(!valid_name(bad), "{bad}");
        assert!(matches!(parse_ref(bad), Err(RegistryError::BadName(_))), "{bad}");
        assert!(matches!(parse_ref(&format!("{bad}@1")), Err(RegistryError::BadName(_))), "{bad}");
    }
    // A directory named like a key but not like a schema is not one.
    assert_eq!(parse_key("../v000001.json"), None);
    assert_eq!(parse_key("-x/v000001.json"), None);
    let e = plan(&[], candidate(&V1.replace("\"app\"", &format!("\"{too_long}\""))), "now");
    assert!(matches!(e, Err(RegistryError::BadName(ref n)) if *n == too_long), "{e:?}");
}

#[tokio::test]
async fn get_refuses_a_name_that_climbs_out_of_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path().join("reg").to_str().unwrap(), false).await.unwrap();
    // A record outside the registry, named as a climbing path would name it.
    let outside = dir.path().join("leak");
    std::fs::create_dir_all(&outside).unwrap();
    let rec = serde_json::json!({ "name": "../leak", "version": 1, "registered_at": "now",
        "forced": false, "source": "secret" });
    std::fs::write(outside.join("v000001.json"), rec.to_string()).unwrap();
    let e = reg.get("../leak", Some(1)).await.unwrap_err();
    assert!(matches!(e, RegistryError::BadName(_)), "{e}");
}

#[tokio::test]
async fn a_record_whose_name_breaks_the_rule_is_left_out_and_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path().to_str().unwrap(), false).await.unwrap();
    for name in ["web", "-old", "_sets"] {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join("web").join("v000001.json"), "{}").unwrap();
    std::fs::write(dir.path().join("-old").join("v000001.json"), "{}").unwrap();
    std::fs::write(dir.path().join("_sets").join("c1.json"), "{}").unwrap();
    for _ in 0..3 {
        let v = reg.versions().await.unwrap();
        assert_eq!(v.keys().collect::<Vec<_>>(), ["web"]);
    }
    let named = reg.refused.lock().unwrap().clone();
    assert_eq!(named.into_iter().collect::<Vec<_>>(), ["-old/v000001.json"]);
    assert!(refused_record("-old/v000001.json"));
    assert!(!refused_record("web/v000001.json"));
    assert!(!refused_record("_sets/c1.json"));
    assert!(!refused_record("-old/notes.txt"));
}

#[test]
fn first_version_must_be_one_and_versions_are_consecutive() {
    let e = plan(&[], candidate(&V1.replace("version = 1", "version = 2")), "now").unwrap_err();
    assert!(e.to_string().contains("next version is 1"), "{e}");
    let cur = registered(V1);
    let e = plan(&cur, candidate(&V1.replace("version = 1", "version = 3")), "now").unwrap_err();
    assert!(matches!(e, RegistryError::WrongVersion { expected: 2, found: 3, .. }), "{e}");
}

#[test]
fn the_same_text_again_is_unchanged() {
    let cur = registered(V1);
    assert!(matches!(plan(&cur, candidate(V1), "now").unwrap().0, Registered::Unchanged(_)));
}

#[test]
fn a_rename_without_alias_is_refused_and_with_alias_accepted() {
    let cur = registered(V1);
    let f = refused(&cur, candidate(&v2("'$.userId'", "'$.user_id'")));
    assert!(f.iter().any(|f| f.severity == Severity::Breaking
        && f.field == "fields.customer_id"
        && f.message.contains("$.userId")));
    // The old path kept after the new one: events that carry both now take the new one, which
    // only a sample can judge.
    let leading = v2("'$.userId'", "'$.user_id', '$.userId'");
    let f = refused(&cur, candidate(&leading));
    assert!(f.iter().any(|f| f.message.contains("adds path $.user_id ahead of $.userId")), "{f:?}");
    let mut c = candidate(&leading);
    c.sample = Some(b"{\"id\":1,\"userId\":\"u\",\"ts\":1709510400}\n".to_vec());
    let (r, findings) = plan(&cur, c, "now").unwrap();
    assert!(matches!(r, Registered::New(ref rec) if rec.version == 2 && !rec.forced));
    assert!(findings.iter().all(|f| f.severity == Severity::Info), "{findings:?}");
    // Appended after the old path, it only fills events that had none: no sample needed.
    let (r, findings) =
        plan(&cur, candidate(&v2("'$.userId'", "'$.userId', '$.user_id'")), "now").unwrap();
    assert!(matches!(r, Registered::New(ref rec) if rec.version == 2 && !rec.forced));
    assert!(findings.iter().all(|f| f.severity == Severity::Info), "{findings:?}");
}

#[test]
fn removing_or_retyping_a_used_field_is_refused() {
    // Another schema keeps the set valid without app's customer id: only compat can object.
    let mut cur = registered(V1);
    cur.extend(registered(
        "name = \"other\"\nversion = 1\n[fields]\nmessage_id = ['$.mid']\ncustomer_id = ['$.cid']\nevent_time = [{ path = '$.t', format = \"epoch\" }]\n",
    ));
    let f = refused(&cur, candidate(&v2("customer_id = ['$.userId']\n", "")));
    assert!(f.iter().any(|f| f.message.contains("removes customer_id")), "{f:?}");
    let f = refused(&cur, candidate(&v2(r#"format = "epoch""#, r#"format = "iso8601""#)));
    assert!(f.iter().any(|f| f.message.contains("retypes $.ts from epoch to iso8601")), "{f:?}");
}

#[test]
fn rule_changes_need_a_sample_and_are_judged_on_it() {
    let cur = registered(V1);
    let moved = v2("kind = \"subscribe_click\"", "kind = \"subscribe_hover\"");
    let f = refused(&cur, candidate(&moved));
    assert!(f.iter().any(|f| f.field == "classify" && f.message.contains("--sample")), "{f:?}");

    let sample = b"{\"id\":1,\"userId\":\"u\",\"ts\":1709510400,\"evt\":\"click\"}\n\
{\"id\":2,\"userId\":\"u\",\"ts\":1709510401,\"evt\":\"view\"}\n"
        .to_vec();
    let mut c = candidate(&moved);
    c.sample = Some(sample.clone());
    let f = refused(&cur, c);
    assert!(
        f.iter().any(|f| f.severity == Severity::Breaking
            && f.message
                .contains("1 of 2 sample events move from subscribe_click to subscribe_hover")),
        "{f:?}"
    );

    // A new rule that classifies events nobody classified before moves nothing.
    let added = V1.replace("version = 1", "version = 2")
        + "[[classify]]\nkind = \"page_view\"\nwhen = [{ path = '$.evt', equals = \"view\" }]\n";
    let mut c = candidate(&added);
    c.sample = Some(sample);
    let (r, findings) = plan(&cur, c, "now").unwrap();
    assert!(matches!(r, Registered::New(_)));
    assert!(findings.iter().any(|f| f.message.contains("become page_view")), "{findings:?}");
}

#[test]
fn force_needs_a_reason_and_stores_it() {
    let cur = registered(V1);
    let mut c = candidate(&v2("'$.userId'", "'$.user_id'"));
    c.force = true;
    assert!(matches!(plan(&cur, c, "now"), Err(RegistryError::ForceWithoutReason)));
    let mut c = candidate(&v2("'$.userId'", "'$.user_id'"));
    c.force = true;
    c.reason = Some("all apps upgraded on 2026-11-01".into());
    match plan(&cur, c, "now").unwrap().0 {
        Registered::New(rec) => {
            assert!(rec.forced);
            assert_eq!(rec.reason.as_deref(), Some("all apps upgraded on 2026-11-01"));
            assert!(compat::is_breaking(&rec.findings));
        }
        Registered::Unchanged(_) => panic!("a new version"),
    }
}

#[test]
fn an_invalid_version_is_refused_with_its_position() {
    let cur = registered(V1);
    match plan(&cur, candidate(&v2("'$.id'", "'$.id[?'")), "now") {
        Err(RegistryError::Invalid(e)) => {
            assert!(e.to_string().contains("app.toml:4:"), "{e}");
        }
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn a_directory_registry_stores_immutable_versions() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path().to_str().unwrap(), false).await.unwrap();
    let (r, _) = reg.register(candidate(V1)).await.unwrap();
    assert!(matches!(r, Registered::New(_)));
    let (r, _) =
        reg.register(candidate(&v2("'$.userId'", "'$.userId', '$.user_id'"))).await.unwrap();
    assert!(matches!(r, Registered::New(ref rec) if rec.version == 2));
    assert_eq!(reg.versions().await.unwrap()["app"], vec![1, 2]);
    assert_eq!(reg.get("app", Some(1)).await.unwrap().source, V1);
    assert_eq!(reg.get("app", None).await.unwrap().version, 2);
    let (x, recs) = reg.load_set().await.unwrap();
    assert_eq!((x.versions(), recs.len()), ("app@2".to_owned(), 1));
    // A second writer of the same version loses.
    let rec = reg.get("app", Some(2)).await.unwrap();
    assert!(!reg.create(&key("app", 2), serde_json::to_vec(&rec).unwrap()).await.unwrap());
    assert!(matches!(reg.get("nope", None).await, Err(RegistryError::NotFound(_))));
}

const OTHER: &str = "name = \"other\"\nversion = 1\n[fields]\nmessage_id = ['$.mid']\ncustomer_id = ['$.cid']\nevent_time = [{ path = '$.t', format = \"epoch\" }]\n";

fn unsafe_findings(r: Result<Vec<(Registered, Vec<Finding>)>, RegistryError>) -> Vec<Finding> {
    match r {
        Err(RegistryError::Unsafe { findings, .. }) => findings,
        other => panic!("expected a warning refusal, got {other:?}"),
    }
}

#[test]
fn an_empty_registry_does_not_silently_lose_the_schemas_directory() {
    let dir = Directory { path: "schemas".into(), names: vec!["app".into(), "other".into()] };
    let with_dir = |text: &str, label: &str| {
        let mut c = candidate(text);
        c.label = label.into();
        c.directory = Some(dir.clone());
        c
    };
    // app alone into an empty registry: `other` would no longer be read.
    let f = unsafe_findings(plan_many(&[], vec![with_dir(V1, "schemas/app.toml")], "now"));
    let w = f.iter().find(|f| f.severity == Severity::Warning).unwrap();
    assert_eq!(w.field, "registry");
    assert!(w.message.contains("would lose its other schema (other)"), "{w:?}");
    assert!(w.message.contains("clickstream schema register schemas --registry"), "{w:?}");
    // A new producer alone: both shipped ones would be lost; the seed command names its file.
    let e = plan(&[], with_dir(&V1.replace("\"app\"", "\"new\""), "new.toml"), "now").unwrap_err();
    assert!(e.to_string().contains("(app, other)"), "{e}");
    assert!(e.to_string().contains("register schemas new.toml --registry"), "{e}");
    assert!(e.to_string().contains("--force --reason"), "{e}");
    // The whole directory at once: nothing lost, each judged within the others.
    let all = plan_many(
        &[],
        vec![with_dir(V1, "schemas/app.toml"), with_dir(OTHER, "schemas/other.toml")],
        "now",
    )
    .unwrap();
    assert_eq!(all.len(), 2);
    assert!(
        all.iter().all(|(r, f)| matches!(r, Registered::New(rec) if !rec.forced) && f.is_empty())
    );
    // Forced with a reason: registered, and the reason and warning are kept.
    let mut c = with_dir(V1, "schemas/app.toml");
    c.force = true;
    c.reason = Some("other moves to its own registry".into());
    match plan(&[], c, "now").unwrap().0 {
        Registered::New(rec) => {
            assert!(rec.forced);
            assert_eq!(rec.reason.as_deref(), Some("other moves to its own registry"));
            assert!(rec.findings.iter().any(|f| f.severity == Severity::Warning));
        }
        Registered::Unchanged(_) => panic!("a new version"),
    }
    // A registry that holds something already is not seeded by this call.
    let cur = registered(V1);
    assert!(plan(&cur, with_dir(&v2("'$.userId'", "'$.userId', '$.user_id'"), "x"), "now").is_ok());
}

#[test]
fn a_version_whose_own_sample_events_are_mostly_dead_lettered_needs_force() {
    // The customer id path is wrong: 2 of the 3 lines read through app's message id path are
    // dead-lettered; the line of the other producer does not count.
    let wrong = V1.replace("'$.userId'", "'$.user_id'");
    let sample = b"{\"id\":1,\"userId\":\"u\",\"ts\":1709510400}\n\
{\"id\":2,\"userId\":\"u\",\"ts\":1709510401}\n\
{\"id\":3,\"user_id\":\"u\",\"ts\":1709510402}\n\
{\"mid\":4,\"cid\":\"c\",\"t\":1709510403}\n"
        .to_vec();
    let other = registered(OTHER);
    let mut c = candidate(&wrong);
    c.sample = Some(sample.clone());
    let f = unsafe_findings(plan_many(&other, vec![c], "now"));
    let w = f.iter().find(|f| f.severity == Severity::Warning).unwrap();
    assert_eq!(w.field, "sample");
    assert!(w.message.starts_with("2 of the 3 sample events that are app's own"), "{w:?}");
    assert!(w.message.contains("missing_customer_id 2 (first at line 1)"), "{w:?}");
    assert!(w.message.contains(r#"first at line 1: {"id":1,"userId":"u""#), "{w:?}");
    // Right paths: accepted, no warning.
    let mut c = candidate(V1);
    c.sample = Some(sample.clone());
    let (r, f) = plan(&other, c, "now").unwrap();
    assert!(matches!(r, Registered::New(_)), "{f:?}");
    assert!(f.iter().all(|f| f.severity == Severity::Info), "{f:?}");
    // A reject rule of its own that dead-letters most of its events counts too.
    let rejecting = V1.to_owned()
        + "[[reject]]\nreason = \"test_event\"\nwhen = [{ path = '$.ts', exists = true }]\n";
    let mut c = candidate(&rejecting);
    c.sample = Some(sample.clone());
    let f = unsafe_findings(plan_many(&other, vec![c], "now"));
    assert!(f.iter().any(|f| f.message.contains("test_event 3")), "{f:?}");
    let mut c = candidate(&wrong);
    c.sample = Some(sample);
    c.force = true;
    c.reason = Some("user_id ships tomorrow".into());
    assert!(matches!(plan(&other, c, "now").unwrap().0, Registered::New(rec) if rec.forced));
}

#[test]
fn a_new_name_joining_a_set_in_force_is_judged_on_a_sample_or_refused() {
    let cur = registered(OTHER);
    // Its reject rule would dead-letter every event of `other` too.
    let greedy =
        V1.to_owned() + "[[reject]]\nreason = \"bot\"\nwhen = [{ path = '$.t', exists = true }]\n";
    let f = refused(&cur, candidate(&greedy));
    assert!(f.iter().any(|f| f.field == "name" && f.message.contains("adds schema app")), "{f:?}");
    // The sample shows what it does to the set's events.
    let mut c = candidate(&greedy);
    c.sample = Some(b"{\"mid\":4,\"cid\":\"c\",\"t\":1709510403}\n".to_vec());
    let f = refused(&cur, c);
    assert!(f.iter().any(|f| f.field == "sample" && f.message.contains("bot")), "{f:?}");
    // A harmless one passes on a sample, and --force --reason overrides without one.
    let mut c = candidate(V1);
    c.sample = Some(b"{\"mid\":4,\"cid\":\"c\",\"t\":1709510403}\n".to_vec());
    assert!(matches!(plan(&cur, c, "now").unwrap().0, Registered::New(ref r) if !r.forced));
    let mut c = candidate(V1);
    (c.force, c.reason) = (true, Some("a new producer, checked by hand".into()));
    assert!(matches!(plan(&cur, c, "now").unwrap().0, Registered::New(ref r) if r.forced));
}

#[test]
fn a_priority_change_or_reordered_times_need_a_sample() {
    let cur = registered(V1);
    let f = refused(&cur, candidate(&V1.replace("version = 1", "version = 2\npriority = 5")));
    assert!(f.iter().any(|f| f.field == "priority"), "{f:?}");
    let two_times = V1.replace(
        "event_time = [{ path = '$.ts', format = \"epoch\" }]",
        "event_time = [{ path = '$.ts', format = \"epoch\" }, { path = '$.at', format = \"epoch\" }]",
    );
    let cur = registered(&two_times);
    let swapped = two_times.replace("version = 1", "version = 2").replace(
        "[{ path = '$.ts', format = \"epoch\" }, { path = '$.at', format = \"epoch\" }]",
        "[{ path = '$.at', format = \"epoch\" }, { path = '$.ts', format = \"epoch\" }]",
    );
    let f = refused(&cur, candidate(&swapped));
    assert!(
        f.iter().any(|f| f.field == "fields.event_time" && f.message.contains("order")),
        "{f:?}"
    );
}
