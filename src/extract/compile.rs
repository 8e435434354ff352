//! Compiling a schema set: every file's paths, fields, rules, kinds and attributes merged into
//! one [`Extractor`], with every problem of every file reported at once.

use super::catalog::Catalog;
use super::path::{self, JsonPath, Step};
use super::schema::{self, Condition, LoadedSchema, SchemaError, SchemaErrors};
use super::time::TimeSpec;
use super::walk::Trie;
use super::{BUILTIN_REASONS, Cond, Extractor, Rule, SeenRule, Test, order};
use crate::event::Kind;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Collects slots for paths while a schema set compiles.
#[derive(Default)]
struct Paths {
    ids: HashMap<String, usize>,
    compiled: Vec<JsonPath>,
}

impl Paths {
    fn intern(
        &mut self,
        s: &LoadedSchema,
        text: &toml::Spanned<String>,
        field: &str,
        errs: &mut Vec<SchemaError>,
    ) -> usize {
        if let Some(&i) = self.ids.get(text.get_ref()) {
            return i;
        }
        match JsonPath::parse(text.get_ref()) {
            Ok(p) => {
                self.compiled.push(p);
                let i = self.compiled.len() - 1;
                self.ids.insert(text.get_ref().clone(), i);
                i
            }
            Err(msg) => {
                errs.push(s.error(text.span(), field, msg));
                usize::MAX
            }
        }
    }
}

impl Extractor {
    /// Compiles parsed schema files into one extractor.
    ///
    /// # Errors
    /// Every semantic problem found (bad paths, unknown formats or kinds, duplicate names, …).
    #[allow(clippy::too_many_lines)]
    pub fn compile(mut schemas: Vec<LoadedSchema>) -> Result<Extractor, SchemaErrors> {
        schemas.sort_by(|a, b| {
            (a.schema.priority, a.schema.name.get_ref())
                .cmp(&(b.schema.priority, b.schema.name.get_ref()))
        });
        let mut errs = Vec::new();
        let mut seen_names: HashMap<String, &Path> = HashMap::new();
        let mut paths = Paths::default();
        let mut json_strings = Vec::new();
        let (mut message_id, mut customer_id, mut event_time) =
            (Vec::new(), Vec::new(), Vec::new());
        let (mut rejects, mut classify) = (Vec::new(), Vec::new());
        let mut seen_rules: Vec<SeenRule> = Vec::new();
        // (field, move, schema index, rule index) of every explicit placement.
        let mut moves: Vec<(String, order::Move<usize>, usize, usize)> = Vec::new();
        let catalog = Catalog::build(&schemas.iter().collect::<Vec<_>>(), &mut errs);
        // Attribute name → its paths' indexes, from the first declaration.
        let mut attr_paths: HashMap<String, Vec<usize>> = HashMap::new();
        // (path index, schema) of every field candidate, in merge order.
        let mut field_owner: Vec<(usize, Arc<str>)> = Vec::new();
        for s in &schemas {
            let sc = &s.schema;
            let name = sc.name.get_ref();
            let owner: Arc<str> = Arc::from(name.as_str());
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                errs.push(s.error(
                    sc.name.span(),
                    "name",
                    "a schema name is letters, digits, `_` and `-` only",
                ));
            }
            if let Some(other) = seen_names.insert(name.clone(), &s.file) {
                errs.push(s.error(
                    sc.name.span(),
                    "name",
                    format!("duplicate schema name `{name}`, also used by {}", other.display()),
                ));
            }
            for (i, p) in sc.json_strings.iter().enumerate() {
                let field = format!("json_strings[{i}]");
                match JsonPath::parse(p.get_ref()) {
                    Ok(jp) if jp.steps().is_some() => json_strings.push(jp),
                    Ok(_) => errs.push(s.error(
                        p.span(),
                        &field,
                        "json_strings take simple paths only (names and indexes)",
                    )),
                    Err(m) => errs.push(s.error(p.span(), &field, m)),
                }
            }
            for (i, p) in sc.fields.message_id.iter().enumerate() {
                let idx = paths.intern(s, p, &format!("fields.message_id[{i}]"), &mut errs);
                field_owner.push((idx, Arc::clone(&owner)));
                message_id.push(idx);
            }
            for (i, p) in sc.fields.customer_id.iter().enumerate() {
                let idx = paths.intern(s, p, &format!("fields.customer_id[{i}]"), &mut errs);
                field_owner.push((idx, Arc::clone(&owner)));
                customer_id.push(idx);
            }
            for (i, t) in sc.fields.event_time.iter().enumerate() {
                let field = format!("fields.event_time[{i}]");
                let slot = paths.intern(s, &t.path, &field, &mut errs);
                field_owner.push((slot, Arc::clone(&owner)));
                match TimeSpec::compile(t) {
                    Ok(spec) => event_time.push((slot, spec)),
                    Err(problems) => errs.extend(
                        problems
                            .into_iter()
                            .map(|(span, key, msg)| s.error(span, &format!("{field}.{key}"), msg)),
                    ),
                }
            }
            let schema_name: Arc<str> = Arc::from(name.as_str());
            for (i, r) in sc.reject.iter().enumerate() {
                let field = format!("reject[{i}]");
                let reason = r.reason.get_ref();
                if reason.is_empty()
                    || !reason
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    errs.push(s.error(
                        r.reason.span(),
                        &format!("{field}.reason"),
                        "a reason is snake_case: lowercase letters, digits and `_`",
                    ));
                } else if BUILTIN_REASONS.contains(&reason.as_str()) && reason != "not_activity" {
                    errs.push(s.error(
                        r.reason.span(),
                        &format!("{field}.reason"),
                        format!(
                            "`{reason}` is a reason the pipeline gives itself: pick another name"
                        ),
                    ));
                }
                let when = conditions(s, &r.when, &field, &mut paths, &mut errs);
                rejects.push(Rule {
                    when,
                    then: (Arc::from(reason.as_str()), Arc::clone(&schema_name)),
                    origin: Arc::from(format!("{name}:{field}")),
                });
            }
            for (i, o) in sc.order.iter().enumerate() {
                let si = schemas.iter().position(|x| std::ptr::eq(x, s)).unwrap_or(0);
                if let Some(mv) = placement(s, o, i, &mut paths, &mut errs) {
                    moves.push((o.field.get_ref().clone(), mv, si, i));
                }
            }
            for (i, a) in sc.attributes.iter().enumerate() {
                let ids: Vec<usize> = a
                    .paths
                    .get_ref()
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        paths.intern(s, p, &format!("attributes[{i}].paths[{j}]"), &mut errs)
                    })
                    .collect();
                attr_paths.entry(a.name.get_ref().clone()).or_insert(ids);
            }
            for (i, r) in sc.classify.iter().enumerate() {
                let field = format!("classify[{i}]");
                let when = conditions(s, &r.when, &field, &mut paths, &mut errs);
                match catalog.kind(r.kind.get_ref()).map(|k| Kind(k as u16)) {
                    Some(kind) => {
                        let mut key: Vec<(usize, Test)> =
                            when.iter().map(|c| (c.slot, c.test.clone())).collect();
                        key.sort();
                        if let Some((other_kind, where_)) = seen_rules
                            .iter()
                            .find(|(k, _, _)| *k == key)
                            .map(|(_, kd, w)| (*kd, w.clone()))
                        {
                            if other_kind != kind {
                                errs.push(s.error(
                                    r.kind.span(),
                                    &format!("{field}.kind"),
                                    format!(
                                        "conflicting classification: {where_} has the same conditions and classifies as {}; only the first kind in precedence order would ever apply",
                                        catalog.kinds[other_kind.0 as usize].name
                                    ),
                                ));
                            }
                        } else {
                            seen_rules.push((key, kind, format!("{}:{field}", s.file.display())));
                        }
                        classify.push(Rule {
                            when,
                            then: kind,
                            origin: Arc::from(format!("{name}:{field}")),
                        });
                    }
                    None => errs.push(s.error(
                        r.kind.span(),
                        &format!("{field}.kind"),
                        format!(
                                "unknown kind `{}`: the set declares {}{}",
                                r.kind.get_ref(),
                                catalog
                                    .kinds
                                    .iter()
                                    .map(|k| k.name.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                if catalog.kinds.iter().all(|k| k.schema.is_none()) {
                                    " (the classic kinds: declare a new one under [[kinds]])"
                                } else {
                                    " (declare it under [[kinds]] in one schema of the set)"
                                }
                            ),
                    )),
                }
            }
        }
        if schemas.is_empty() {
            errs.push(SchemaError {
                file: "schemas".into(),
                line: 0,
                column: 0,
                field: "-".into(),
                message: "no schema file".into(),
            });
        }
        let declared = |f: fn(&schema::Fields) -> usize| {
            schemas.iter().map(|s| f(&s.schema.fields)).sum::<usize>()
        };
        for (field, n) in [
            ("message_id", declared(|f| f.message_id.len())),
            ("customer_id", declared(|f| f.customer_id.len())),
            ("event_time", declared(|f| f.event_time.len())),
        ] {
            if n == 0 && !schemas.is_empty() {
                let s = &schemas[0];
                errs.push(s.error(
                    0..0,
                    &format!("fields.{field}"),
                    "no schema of the set gives a path for this field",
                ));
            }
        }
        for (field, mv, si, i) in &moves {
            let s = &schemas[*si];
            let o = &s.schema.order[*i];
            let own = match field.as_str() {
                "message_id" => {
                    s.schema.fields.message_id.iter().any(|p| p.get_ref() == o.path.get_ref())
                }
                "customer_id" => {
                    s.schema.fields.customer_id.iter().any(|p| p.get_ref() == o.path.get_ref())
                }
                _ => {
                    s.schema.fields.event_time.iter().any(|t| t.path.get_ref() == o.path.get_ref())
                }
            };
            let missing = match field.as_str() {
                "message_id" => order::place(&mut message_id, |&x| x, std::slice::from_ref(mv)),
                "customer_id" => order::place(&mut customer_id, |&x| x, std::slice::from_ref(mv)),
                _ => order::place(
                    &mut event_time,
                    |x: &(usize, TimeSpec)| x.0,
                    std::slice::from_ref(mv),
                ),
            };
            if !own {
                errs.push(s.error(
                    o.path.span(),
                    &format!("order[{i}].path"),
                    format!("{} is not one of this schema's {field} paths: a schema places only its own paths", o.path.get_ref()),
                ));
            } else if !missing.is_empty() {
                let anchor =
                    o.before.as_ref().or(o.after.as_ref()).map_or(0..0, toml::Spanned::span);
                errs.push(s.error(
                    anchor,
                    &format!("order[{i}]"),
                    format!("no schema of the set has that path for {field}: see `clickstream schema show --set` for the candidates"),
                ));
            }
        }
        if !errs.is_empty() {
            return Err(SchemaErrors(errs));
        }
        // A path two schemas declare is one candidate, at its first place (with its first
        // format): a second copy could never be the one that supplies the field.
        let mut seen = std::collections::HashSet::new();
        message_id.retain(|&p| seen.insert(p));
        seen.clear();
        customer_id.retain(|&p| seen.insert(p));
        seen.clear();
        event_time.retain(|(p, _)| seen.insert(*p));
        // Stable: by the kinds' precedence, then the kinds' order, then the rules' own order.
        classify
            .sort_by_key(|r: &Rule<Kind>| (catalog.kinds[r.then.0 as usize].precedence, r.then.0));

        let simple: Vec<&[Step]> = paths.compiled.iter().filter_map(JsonPath::steps).collect();
        let json: Vec<&[Step]> = json_strings.iter().filter_map(JsonPath::steps).collect();
        let (trie, simple_slots) = Trie::build(&simple, &json);
        // Path index → slot: simple paths got trie slots; general queries get slots after them.
        let mut slot_of = Vec::with_capacity(paths.compiled.len());
        let mut queries = Vec::new();
        let mut simple_iter = simple_slots.into_iter();
        let mut extra = trie.slot_count();
        for p in &paths.compiled {
            if p.steps().is_some() {
                slot_of.push(simple_iter.next().unwrap_or(0));
            } else {
                slot_of.push(extra);
                queries.push((p.clone(), extra));
                extra += 1;
            }
        }
        if queries.len() > path::MAX_GENERAL_QUERIES
            && let Some(first) = schemas.first()
        {
            return Err(SchemaErrors(vec![first.error(
                0..0,
                "-",
                format!(
                    "the set uses {} general JSONPath queries (wildcards, filters, ..); at most {} are allowed, because each costs a second parse of every event: use simple paths ($.a.b, $.a[0]) where you can",
                    queries.len(),
                    path::MAX_GENERAL_QUERIES
                ),
            )]));
        }
        let mut slot_paths = vec![Arc::<str>::from("?"); extra];
        for (p, &slot) in paths.compiled.iter().zip(&slot_of) {
            slot_paths[slot] = Arc::from(p.as_str());
        }
        let remap = |conds: &mut Vec<Cond>| conds.iter_mut().for_each(|c| c.slot = slot_of[c.slot]);
        for r in &mut rejects {
            remap(&mut r.when);
        }
        for r in &mut classify {
            remap(&mut r.when);
        }
        let message_id: Vec<usize> = message_id.iter().map(|&i| slot_of[i]).collect();
        let customer_id: Vec<usize> = customer_id.iter().map(|&i| slot_of[i]).collect();
        let event_time: Vec<(usize, TimeSpec)> =
            event_time.into_iter().map(|(i, f)| (slot_of[i], f)).collect();
        let describe = |slots: &mut dyn Iterator<Item = usize>| -> Arc<str> {
            Arc::from(slots.map(|s| slot_paths[s].to_string()).collect::<Vec<_>>().join(", "))
        };
        let described = [
            describe(&mut message_id.iter().copied()),
            describe(&mut customer_id.iter().copied()),
            describe(&mut event_time.iter().map(|(s, _)| *s)),
        ];
        let attrs = catalog
            .attrs
            .iter()
            .map(|a| {
                let ids = attr_paths.get(&*a.name).map_or(&[][..], Vec::as_slice);
                (ids.iter().map(|&i| slot_of[i]).collect(), a.ty, a.max_bytes)
            })
            .collect();
        let mut slot_schema: Vec<Option<Arc<str>>> = vec![None; extra];
        for (idx, owner) in field_owner {
            slot_schema[slot_of[idx]].get_or_insert(owner);
        }
        let versions =
            schemas.iter().map(|s| (s.schema.name.get_ref().clone(), s.schema.version)).collect();
        Ok(Extractor {
            trie,
            queries,
            rejects,
            message_id,
            customer_id,
            event_time,
            described,
            slot_paths,
            classify,
            attrs,
            catalog,
            versions,
            slot_schema,
        })
    }
}

/// The move an `[[order]]` entry asks for, in path indexes (interning the paths it names).
fn placement(
    s: &LoadedSchema,
    o: &schema::OrderRule,
    i: usize,
    paths: &mut Paths,
    errs: &mut Vec<SchemaError>,
) -> Option<order::Move<usize>> {
    let field = format!("order[{i}]");
    if !["message_id", "customer_id", "event_time"].contains(&o.field.get_ref().as_str()) {
        errs.push(s.error(
            o.field.span(),
            &format!("{field}.field"),
            "field is message_id, customer_id or event_time",
        ));
        return None;
    }
    let (anchor, after) = match (&o.before, &o.after) {
        (Some(b), None) => (b, false),
        (None, Some(a)) => (a, true),
        _ => {
            errs.push(s.error(o.path.span(), &field, "give exactly one of `before` or `after`"));
            return None;
        }
    };
    let item = paths.intern(s, &o.path, &format!("{field}.path"), errs);
    let anchor = paths.intern(s, anchor, &field, errs);
    Some(order::Move { item, anchor, after })
}

fn conditions(
    s: &LoadedSchema,
    when: &toml::Spanned<Vec<Condition>>,
    field: &str,
    paths: &mut Paths,
    errs: &mut Vec<SchemaError>,
) -> Vec<Cond> {
    if when.get_ref().is_empty() {
        errs.push(s.error(
            when.span(),
            &format!("{field}.when"),
            "a rule needs at least one condition",
        ));
    }
    let mut out = Vec::new();
    for (i, c) in when.get_ref().iter().enumerate() {
        let f = format!("{field}.when[{i}]");
        let slot = paths.intern(s, &c.path, &format!("{f}.path"), errs);
        let test = match (&c.equals, &c.one_of, c.exists) {
            (Some(v), None, None) => Test::Equals(v.clone()),
            (None, Some(v), None) if !v.is_empty() => Test::In(v.clone()),
            (None, Some(_), None) => {
                errs.push(s.error(
                    c.path.span(),
                    &f,
                    "`in = []` can never match: list at least one value",
                ));
                continue;
            }
            (None, None, Some(b)) => Test::Exists(b),
            _ => {
                errs.push(s.error(
                    c.path.span(),
                    &f,
                    "give exactly one of `equals`, `in` or `exists`",
                ));
                continue;
            }
        };
        if let Some(other) =
            out.iter().position(|o: &Cond| o.slot == slot && o.test.excludes(&test))
        {
            errs.push(s.error(
                c.path.span(),
                &f,
                format!("can never match together with {field}.when[{other}] on the same path: the rule never applies"),
            ));
        }
        out.push(Cond { slot, test });
    }
    out
}
