//! [`ObjectStore`] in memory: the model of S3's conditional writes that the commit protocol's
//! unit tests run against.

use super::{Condition, Head, Object, ObjectError, ObjectStore};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio_util::sync::CancellationToken;

/// Objects in memory: the model the commit protocol's tests run against. Conditions behave as
/// S3's; ETags are a counter; `fail_next_put` makes the next matching request fail, as a store
/// that refuses a write.
#[derive(Debug, Default, Clone)]
pub struct MemoryObjects {
    inner: Arc<Mutex<Memory>>,
    /// Requests fail as cancelled once this fires (as the S3 store's retries stop).
    cancel: Option<CancellationToken>,
}

#[derive(Debug, Default)]
struct Memory {
    objects: BTreeMap<String, Object>,
    next_etag: u64,
    /// Puts so far, in order, with their metadata — for assertions about who wrote what.
    puts: Vec<(String, BTreeMap<String, String>)>,
    fail: Vec<String>,
}

impl MemoryObjects {
    /// Makes the next put of a key starting with `prefix` fail (once).
    pub fn fail_next_put(&self, prefix: &str) {
        self.lock().fail.push(prefix.to_owned());
    }

    /// Every successful put so far: key and metadata.
    #[must_use]
    pub fn puts(&self) -> Vec<(String, BTreeMap<String, String>)> {
        self.lock().puts.clone()
    }

    /// Removes an object behind the protocol's back (an operator, a lifecycle rule).
    pub fn remove(&self, key: &str) {
        self.lock().objects.remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn live(&self, what: &str) -> Result<(), ObjectError> {
        match &self.cancel {
            Some(c) if c.is_cancelled() => Err(ObjectError::Cancelled(what.to_owned())),
            _ => Ok(()),
        }
    }
}

impl ObjectStore for MemoryObjects {
    fn with_cancel(&self, cancel: CancellationToken) -> Arc<dyn ObjectStore> {
        Arc::new(MemoryObjects { inner: Arc::clone(&self.inner), cancel: Some(cancel) })
    }

    fn get(&self, key: &str) -> Result<Option<Object>, ObjectError> {
        self.live(key)?;
        Ok(self.lock().objects.get(key).cloned())
    }

    fn head(&self, key: &str) -> Result<Option<Head>, ObjectError> {
        self.live(key)?;
        Ok(self
            .lock()
            .objects
            .get(key)
            .map(|o| Head { etag: o.etag.clone(), meta: o.meta.clone() }))
    }

    fn put(
        &self,
        key: &str,
        body: Bytes,
        meta: &[(&str, &str)],
        cond: Condition,
    ) -> Result<String, ObjectError> {
        self.live(key)?;
        let mut m = self.lock();
        if let Some(i) = m.fail.iter().position(|p| key.starts_with(p.as_str())) {
            m.fail.remove(i);
            return Err(ObjectError::Failed {
                op: "put",
                key: key.to_owned(),
                message: "injected failure".into(),
            });
        }
        let ok = match (&cond, m.objects.get(key)) {
            (Condition::None, _) | (Condition::IfAbsent, None) => true,
            (Condition::IfMatch(e), Some(o)) => *e == o.etag,
            (Condition::IfAbsent, Some(_)) | (Condition::IfMatch(_), None) => false,
        };
        if !ok {
            return Err(ObjectError::Precondition { key: key.to_owned() });
        }
        m.next_etag += 1;
        let etag = format!("\"{}\"", m.next_etag);
        let meta: BTreeMap<String, String> =
            meta.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        m.objects.insert(key.to_owned(), Object { body, etag: etag.clone(), meta: meta.clone() });
        m.puts.push((key.to_owned(), meta));
        Ok(etag)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        self.live(prefix)?;
        Ok(self.lock().objects.keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }

    fn delete(&self, keys: &[String]) -> Result<(), ObjectError> {
        self.live("delete")?;
        let mut m = self.lock();
        for k in keys {
            m.objects.remove(k);
        }
        Ok(())
    }

    fn abort_uploads(&self, _: &str, _: &dyn Fn(&str) -> bool) -> Result<usize, ObjectError> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_conditions_behave_as_s3s() {
        let m = MemoryObjects::default();
        let e1 = m.put("k", Bytes::from_static(b"1"), &[], Condition::IfAbsent).unwrap();
        assert!(matches!(
            m.put("k", Bytes::from_static(b"2"), &[], Condition::IfAbsent),
            Err(ObjectError::Precondition { .. })
        ));
        let e2 = m.put("k", Bytes::from_static(b"2"), &[], Condition::IfMatch(e1.clone())).unwrap();
        assert!(matches!(
            m.put("k", Bytes::from_static(b"3"), &[], Condition::IfMatch(e1)),
            Err(ObjectError::Precondition { .. })
        ));
        assert_eq!(m.get("k").unwrap().unwrap().etag, e2);
        assert!(matches!(
            m.put("gone", Bytes::new(), &[], Condition::IfMatch(e2)),
            Err(ObjectError::Precondition { .. })
        ));
    }
}
