//! Registrations serialised by a conditional write: each one claims the point of the
//! registry's history it was judged at, so that a second registration (of another name, at
//! the same moment) is judged against the first instead of beside it. Without it, two changes
//! that each compile within the set they saw can together leave a set that does not.
//!
//! The point of history is the number of version records (records are immutable and never
//! deleted, so it only grows). A registration judged at `n` creates `_sets/c{n}.json`
//! (create-if-absent) holding the records it is about to write, then writes them. Whoever
//! finds the claim taken lost the race: it finishes the winner's records if the winner was cut
//! short (they were judged at `n` and nothing else could land there), and judges again. A
//! registrant that stops between its claim and its records is thus finished by the next one;
//! readers never read claims (their keys are not version keys).

use super::{Candidate, Finding, Registered, Registry, RegistryError, VersionRecord, key};

/// How far below the current count a registrant looks for an unfinished claim: a claim covers
/// the records of one registration (a whole schemas directory at most).
const LOOKBACK: u64 = 64;

/// Attempts before giving up when registrations keep landing first.
const ATTEMPTS: usize = 8;

/// Number of version records in a listing: the point of history it shows.
fn count(versions: &std::collections::BTreeMap<String, Vec<u32>>) -> u64 {
    versions.values().map(|v| v.len() as u64).sum()
}

fn claim_key(at: u64) -> String {
    format!("_sets/c{at:010}.json")
}

/// A registration judged at a point of the registry's history.
pub(super) struct Judged {
    pub(super) at: u64,
    pub(super) planned: Vec<(Registered, Vec<Finding>)>,
}

impl Registry {
    /// Validates, checks and stores `cs` as one change, judged against the set that the last
    /// registration before it left.
    pub(super) async fn register_claimed(
        &self,
        cs: Vec<Candidate>,
        now: &str,
    ) -> Result<Vec<(Registered, Vec<Finding>)>, RegistryError> {
        for _ in 0..ATTEMPTS {
            let j = self.judge(&cs, now).await?;
            if self.store(&j).await? {
                return Ok(j.planned);
            }
        }
        Err(RegistryError::Raced(format!(
            "the registry changed {ATTEMPTS} times while this registration was judged; run it again"
        )))
    }

    /// Plans `cs` against the set at the current point of history, after finishing the
    /// newest claim if its registrant stopped short.
    pub(super) async fn judge(&self, cs: &[Candidate], now: &str) -> Result<Judged, RegistryError> {
        let mut versions = self.versions().await?;
        if self.finish_newest_claim(count(&versions)).await? {
            versions = self.versions().await?;
        }
        // The set and the point of history from one listing.
        let current = self.latest_of(&versions).await?;
        let planned = super::plan_many(&current, cs.to_vec(), now)?;
        Ok(Judged { at: count(&versions), planned })
    }

    /// Claims `j.at` and writes its records: `Ok(false)` if another registration claimed it
    /// first (its records are then finished, and `j` must be judged again).
    pub(super) async fn store(&self, j: &Judged) -> Result<bool, RegistryError> {
        let records: Vec<&VersionRecord> = j
            .planned
            .iter()
            .filter_map(|(r, _)| if let Registered::New(rec) = r { Some(rec) } else { None })
            .collect();
        if records.is_empty() {
            return Ok(true);
        }
        let claim = claim_key(j.at);
        let bytes = serde_json::to_vec(&records)
            .map_err(|e| RegistryError::Corrupt { key: claim.clone(), message: e.to_string() })?;
        if !self.create(&claim, bytes).await? {
            self.finish(&claim).await?;
            return Ok(false);
        }
        for rec in records {
            self.create_record(rec).await?;
        }
        Ok(true)
    }

    /// Finishes the newest claim at or below `at` (looking [`LOOKBACK`] back); whether it
    /// wrote anything. Older claims were finished by the registrant of the newer one.
    async fn finish_newest_claim(&self, at: u64) -> Result<bool, RegistryError> {
        for n in (at.saturating_sub(LOOKBACK)..=at).rev() {
            if self.read(&claim_key(n)).await?.is_some() {
                return self.finish(&claim_key(n)).await;
            }
        }
        Ok(false)
    }

    /// Writes the records of `claim` that are missing; whether any was.
    async fn finish(&self, claim: &str) -> Result<bool, RegistryError> {
        let Some(bytes) = self.read(claim).await? else { return Ok(false) };
        let records: Vec<VersionRecord> = serde_json::from_slice(&bytes).map_err(|e| {
            RegistryError::Corrupt { key: claim.to_owned(), message: e.to_string() }
        })?;
        let mut wrote = false;
        for rec in &records {
            wrote |= self.create_record(rec).await?;
        }
        Ok(wrote)
    }

    /// Writes `rec` if absent; whether it did. The same record written already (by the
    /// finisher of its claim) is fine; another one under its key is a registrant that does
    /// not claim (an older version of this program) winning the race.
    async fn create_record(&self, rec: &VersionRecord) -> Result<bool, RegistryError> {
        let k = key(&rec.name, rec.version);
        let bytes = serde_json::to_vec_pretty(rec)
            .map_err(|e| RegistryError::Corrupt { key: k.clone(), message: e.to_string() })?;
        if self.create(&k, bytes).await? {
            return Ok(true);
        }
        let there = self.get(&rec.name, Some(rec.version)).await?;
        if there.source == rec.source && there.registered_at == rec.registered_at {
            Ok(false)
        } else {
            Err(RegistryError::Raced(rec.id()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(name: &str, version: u32, column: &str) -> Candidate {
        let text = format!(
            "name = \"{name}\"\nversion = {version}\n[fields]\nmessage_id = ['$.id']\ncustomer_id = ['$.c']\nevent_time = [{{ path = '$.t', format = \"epoch\" }}]\n[[kinds]]\nname = \"{name}_kind\"\ncolumn = \"{column}\"\n[[classify]]\nkind = \"{name}_kind\"\nwhen = [{{ path = '$.e', equals = \"{name}\" }}]\n"
        );
        Candidate {
            text: text.into_bytes(),
            label: format!("{name}.toml").into(),
            sample: None,
            force: true,
            reason: Some("test".into()),
            directory: None,
        }
    }

    async fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path().to_str().unwrap(), false).await.unwrap();
        reg.register(schema("a", 1, "views")).await.unwrap();
        (dir, reg)
    }

    /// `b@1` and `a@2` each compile within the set they were judged against, but both name
    /// the column `plays`. Judged at the same moment, only the first is stored; the second,
    /// judged again, sees the first and is refused: the set in force always compiles.
    #[tokio::test]
    async fn a_second_registration_judged_beside_the_first_is_judged_again_after_it() {
        let (_dir, reg) = registry().await;
        let one = reg.judge(&[schema("b", 1, "plays")], "2026-12-01T00:00:01Z").await.unwrap();
        let two = reg.judge(&[schema("a", 2, "plays")], "2026-12-01T00:00:02Z").await.unwrap();
        assert_eq!(one.at, two.at);
        assert!(reg.store(&one).await.unwrap());
        assert!(!reg.store(&two).await.unwrap(), "the point of history was claimed");
        let e = reg.judge(&[schema("a", 2, "plays")], "now").await.err().expect("refused");
        assert!(matches!(e, RegistryError::Invalid(_)), "{e}");
        let (x, _) = reg.load_set().await.unwrap();
        assert_eq!(x.versions(), "a@1,b@1");
        // Through the public call: refused the same way.
        assert!(matches!(
            reg.register(schema("a", 2, "plays")).await,
            Err(RegistryError::Invalid(_))
        ));
    }

    /// A registrant that stopped between its claim and its records is finished by the next.
    #[tokio::test]
    async fn a_claim_whose_records_were_never_written_is_finished_by_the_next_registration() {
        let (_dir, reg) = registry().await;
        let cut = reg.judge(&[schema("b", 1, "plays")], "2026-12-01T00:00:01Z").await.unwrap();
        let records: Vec<&VersionRecord> = cut
            .planned
            .iter()
            .filter_map(|(r, _)| if let Registered::New(rec) = r { Some(rec) } else { None })
            .collect();
        assert!(
            reg.create(&claim_key(cut.at), serde_json::to_vec(&records).unwrap()).await.unwrap()
        );
        assert_eq!(reg.versions().await.unwrap().get("b"), None, "stopped before its record");
        let e = reg.register(schema("a", 2, "plays")).await.expect_err("judged against b@1");
        assert!(matches!(e, RegistryError::Invalid(_)), "{e}");
        assert_eq!(reg.versions().await.unwrap()["b"], vec![1]);
        reg.register(schema("c", 1, "clicks")).await.unwrap();
        assert_eq!(reg.load_set().await.unwrap().0.versions(), "a@1,b@1,c@1");
    }
}
