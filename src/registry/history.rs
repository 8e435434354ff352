//! The registry's history, for a processor that finds the latest set unusable: two
//! registrations of different names at once can each pass on its own and together leave a set
//! that does not compile. A processor starting then must not crash-loop on it: it runs the
//! last good set, the newest point of the registry's history whose set compiles.

use super::{Registry, RegistryError, VersionRecord, compile_set};
use crate::extract::Extractor;

/// The set in force, or, when it does not compile, the last good one and why the latest was
/// refused.
pub struct Loaded {
    /// The set to run.
    pub extractor: Extractor,
    /// Its records.
    pub records: Vec<VersionRecord>,
    /// Why the latest set was refused, when `extractor` is an earlier one.
    pub refused: Option<String>,
}

impl Registry {
    /// Loads the set in force; if it does not compile, the newest earlier set that does.
    ///
    /// # Errors
    /// Unreadable or empty registry, or no set in its history compiles.
    pub async fn load_set_or_last_good(&self) -> Result<Loaded, RegistryError> {
        let why = match self.load_set().await {
            Ok((extractor, records)) => return Ok(Loaded { extractor, records, refused: None }),
            Err(RegistryError::Invalid(e)) => e.to_string(),
            Err(e) => return Err(e),
        };
        let mut all = Vec::new();
        for (name, versions) in self.versions().await? {
            for v in versions {
                all.push(self.get(&name, Some(v)).await?);
            }
        }
        let (extractor, records) = last_good(&all).ok_or_else(|| {
            RegistryError::NotFound(format!(
                "a schema set that compiles in registry {} (the latest does not: {why})",
                self.location()
            ))
        })?;
        Ok(Loaded { extractor, records, refused: Some(why) })
    }
}

/// The set as the registry held it just after each registration, newest first, skipping the
/// newest (the set in force): the first that compiles.
fn last_good(all: &[VersionRecord]) -> Option<(Extractor, Vec<VersionRecord>)> {
    let mut times: Vec<&str> = all.iter().map(|r| r.registered_at.as_str()).collect();
    times.sort_unstable();
    times.dedup();
    times.iter().rev().skip(1).find_map(|&at| {
        let set = as_of(all, at);
        compile_set(&set, None).ok().map(|x| (x, set))
    })
}

/// The latest version of every name registered at or before `at`.
fn as_of(all: &[VersionRecord], at: &str) -> Vec<VersionRecord> {
    let mut set: Vec<VersionRecord> = Vec::new();
    for r in all.iter().filter(|r| r.registered_at.as_str() <= at) {
        match set.iter_mut().find(|s| s.name == r.name) {
            Some(s) if s.version < r.version => *s = r.clone(),
            Some(_) => {}
            None => set.push(r.clone()),
        }
    }
    set.sort_by(|a, b| a.name.cmp(&b.name));
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, version: u32, at: &str, source: &str) -> VersionRecord {
        VersionRecord {
            name: name.into(),
            version,
            registered_at: at.into(),
            forced: false,
            reason: None,
            findings: Vec::new(),
            source: source.into(),
        }
    }

    fn schema(name: &str, version: u32, column: &str) -> String {
        format!(
            "name = \"{name}\"\nversion = {version}\n[fields]\nmessage_id = ['$.id']\ncustomer_id = ['$.c']\nevent_time = [{{ path = '$.t', format = \"epoch\" }}]\n[[kinds]]\nname = \"{name}_kind\"\ncolumn = \"{column}\"\n[[classify]]\nkind = \"{name}_kind\"\nwhen = [{{ path = '$.e', equals = \"{name}\" }}]\n"
        )
    }

    /// Two registrations that each compiled within the set they saw, landed at once: `b@1`
    /// and `a@2` both name the column `plays`, so the latest set does not compile.
    #[test]
    fn the_last_good_set_is_the_newest_point_of_history_that_compiles() {
        let all = vec![
            rec("a", 1, "2026-11-01T00:00:00Z", &schema("a", 1, "views")),
            rec("b", 1, "2026-11-02T00:00:00Z", &schema("b", 1, "plays")),
            rec("a", 2, "2026-11-02T00:00:01Z", &schema("a", 2, "plays")),
        ];
        assert!(compile_set(&as_of(&all, "2026-11-02T00:00:01Z"), None).is_err());
        let (x, set) = last_good(&all).expect("a good set");
        assert_eq!(x.versions(), "a@1,b@1");
        assert_eq!(set.len(), 2);
        // Nothing good at all: none.
        assert!(last_good(&all[2..]).is_none());
    }
}
