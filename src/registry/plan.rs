//! Planning a registration, pure: parse the candidates, judge each within the set it joins
//! (compatibility with its previous version, a new name joining the set, a sample's diff), and
//! decide what would be stored. Nothing here reads or writes the registry.

use super::{Candidate, Directory, Registered, RegistryError, VersionRecord, valid_name};
use crate::extract::Extractor;
use crate::extract::compat::{self, Finding, SampleDiff};
use crate::extract::schema::{self, LoadedSchema, SchemaErrors};

/// Compiles a set of records, with `replace` standing in for the record of its name.
///
/// # Errors
/// Every problem of the set.
pub fn compile_set(
    records: &[VersionRecord],
    replace: Option<LoadedSchema>,
) -> Result<Extractor, SchemaErrors> {
    let mut loaded = Vec::new();
    let mut errs = Vec::new();
    let replaced = replace.as_ref().map(|r| r.schema.name.get_ref().clone());
    for r in records {
        if replaced.as_deref() == Some(r.name.as_str()) {
            continue;
        }
        match r.parse() {
            Ok(l) => loaded.push(l),
            Err(e) => errs.push(e),
        }
    }
    loaded.extend(replace);
    if !errs.is_empty() {
        return Err(SchemaErrors(errs));
    }
    Extractor::compile(loaded)
}

/// Decides what registering `c` over `current` does, without storing anything.
///
/// # Errors
/// Invalid, incompatible or risky and not forced, wrong version, or `force` without a reason.
pub fn plan(
    current: &[VersionRecord],
    c: Candidate,
    now: &str,
) -> Result<(Registered, Vec<Finding>), RegistryError> {
    let mut all = plan_many(current, vec![c], now)?;
    all.pop().ok_or_else(|| RegistryError::NotFound("no schema given".into()))
}

/// The warning for registering `names` (offered as the files `labels`) into an empty registry
/// while `dir` holds other schemas, if it does.
fn directory_finding(
    current: &[VersionRecord],
    names: &[String],
    labels: &[String],
    dir: Option<&Directory>,
) -> Option<Finding> {
    let dir = dir?;
    if !current.is_empty() {
        return None;
    }
    let lost: Vec<&str> =
        dir.names.iter().filter(|n| !names.contains(n)).map(String::as_str).collect();
    if lost.is_empty() {
        return None;
    }
    let mut seed = vec![dir.path.clone()];
    seed.extend(
        names.iter().zip(labels).filter(|(n, _)| !dir.names.contains(n)).map(|(_, l)| l.clone()),
    );
    Some(Finding {
        severity: compat::Severity::Warning,
        field: "registry".into(),
        message: format!(
            "the registry is empty, and a processor reading it (run or replay with --registry) reads the registry's schemas only, not the directory {}: registering {} alone would lose {} ({}); seed the registry with the whole set in one command: clickstream schema register {} --registry …",
            dir.path,
            names.join(", "),
            if lost.len() == 1 { "its other schema" } else { "its other schemas" },
            lost.join(", "),
            seed.join(" "),
        ),
    })
}

/// Decides what registering all of `cs` over `current` does, each judged within the set that
/// holds the others too.
///
/// # Errors
/// As [`plan`], for the first one refused; every parse error of every file at once.
pub fn plan_many(
    current: &[VersionRecord],
    cs: Vec<Candidate>,
    now: &str,
) -> Result<Vec<(Registered, Vec<Finding>)>, RegistryError> {
    let mut parsed = Vec::new();
    let mut errs = Vec::new();
    for c in &cs {
        match schema::parse_bytes(&c.label, c.text.clone()) {
            Ok(l) => parsed.push(l),
            Err(e) => errs.push(e),
        }
    }
    if !errs.is_empty() {
        return Err(SchemaErrors(errs).into());
    }
    let names: Vec<String> = parsed.iter().map(|l| l.schema.name.get_ref().clone()).collect();
    // The name becomes a directory name or an S3 key segment.
    if let Some(bad) = names.iter().find(|n| !valid_name(n)) {
        return Err(RegistryError::BadName(bad.clone()));
    }
    let labels: Vec<String> = cs.iter().map(|c| c.label.display().to_string()).collect();
    for (i, n) in names.iter().enumerate() {
        if let Some(j) = names[..i].iter().position(|m| m == n) {
            return Err(RegistryError::Duplicate(format!(
                "{} and {} are both schema `{n}`: register one version at a time",
                cs[j].label.display(),
                cs[i].label.display()
            )));
        }
    }
    // What every candidate would be once registered, to judge each within the others.
    let provisional: Vec<VersionRecord> = parsed
        .iter()
        .map(|l| VersionRecord {
            name: l.schema.name.get_ref().clone(),
            version: l.schema.version,
            registered_at: now.to_owned(),
            forced: false,
            reason: None,
            findings: Vec::new(),
            source: l.text.clone(),
        })
        .collect();
    let mut out = Vec::new();
    for (i, (c, new)) in cs.into_iter().zip(parsed).enumerate() {
        let mut set: Vec<VersionRecord> = current
            .iter()
            .filter(|r| r.name == names[i] || !names.contains(&r.name))
            .cloned()
            .collect();
        set.extend(provisional.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, r)| r.clone()));
        let lost = directory_finding(current, &names, &labels, c.directory.as_ref());
        out.push(plan_one(&set, c, new, lost, now, current.is_empty())?);
    }
    Ok(out)
}

fn plan_one(
    current: &[VersionRecord],
    c: Candidate,
    new: LoadedSchema,
    warning: Option<Finding>,
    now: &str,
    seeding: bool,
) -> Result<(Registered, Vec<Finding>), RegistryError> {
    let reason = c.reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
    if c.force && reason.is_none() {
        return Err(RegistryError::ForceWithoutReason);
    }
    let name = new.schema.name.get_ref().clone();
    let prev = current.iter().find(|r| r.name == name);
    if let Some(p) = prev
        && p.source == new.text
    {
        return Ok((Registered::Unchanged(p.clone()), Vec::new()));
    }
    let expected = prev.map_or(1, |p| p.version + 1);
    if new.schema.version != expected {
        return Err(RegistryError::WrongVersion { name, found: new.schema.version, expected });
    }
    let source = new.text.clone();
    let mut findings: Vec<Finding> = warning.into_iter().collect();
    if let Some(p) = prev {
        let old = p.parse().map_err(|e| SchemaErrors(vec![e]))?;
        findings.extend(compat::static_findings(&old, &new, c.sample.is_some()));
    }
    // A new name joining a set in force is a rule change like any other: its reject and
    // classify rules see every event, and by its priority its paths may come first for ids
    // and time. Seeding an empty registry (each schema judged within the others) has no set
    // in force to compare against.
    let joins = prev.is_none() && !seeding && !current.is_empty();
    if joins && c.sample.is_none() {
        let others: Vec<String> = current.iter().map(VersionRecord::id).collect();
        findings.push(compat::joining_finding(&name, new.schema.priority, &others));
    }
    // Kept to judge the new version's own events once the set is compiled.
    let own = c
        .sample
        .as_ref()
        .and_then(|_| schema::parse_bytes(&c.label, source.clone().into_bytes()).ok());
    let new_set = compile_set(current, Some(new))?;
    if let Some(sample) = &c.sample {
        if prev.is_some() || joins {
            let old_set = compile_set(current, None)?;
            let mut diff = SampleDiff::default();
            for (i, line) in sample.split(|&b| b == b'\n').enumerate() {
                if !line.is_empty() {
                    diff.observe(&old_set, &new_set, i as u64 + 1, line);
                }
            }
            findings.extend(diff.findings());
        }
        if let Some(own) = &own {
            findings.extend(compat::own_events_finding(own, &new_set, sample));
        }
    }
    findings.sort_by_key(|f| f.severity);
    if compat::is_breaking(&findings) && !c.force {
        return Err(RegistryError::Incompatible {
            name,
            version: expected,
            previous: expected - 1,
            findings,
        });
    }
    if compat::needs_force(&findings) && !c.force {
        return Err(RegistryError::Unsafe { id: format!("{name}@{expected}"), findings });
    }
    let rec = VersionRecord {
        name,
        version: expected,
        registered_at: now.to_owned(),
        forced: c.force && compat::needs_force(&findings),
        reason,
        findings: findings.clone(),
        source,
    };
    Ok((Registered::New(rec), findings))
}
