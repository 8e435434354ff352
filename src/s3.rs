//! S3 access shared by the schema registry and the sinks: `s3://bucket/prefix` locations and
//! client construction from the standard AWS environment (`AWS_ENDPOINT_URL`, credentials,
//! region), plus the one setting the SDK does not read from the environment.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::BehaviorVersion;
use std::fmt;

/// A bucket and a key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket[/prefix]`; `None` when `s` is not an `s3://` URL.
    ///
    /// # Errors
    /// An `s3://` URL without a bucket.
    #[must_use]
    pub fn parse(s: &str) -> Option<Result<S3Location, String>> {
        let rest = s.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Some(Err(format!("`{s}` names no bucket: write s3://BUCKET/PREFIX")));
        }
        Some(Ok(S3Location {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        }))
    }

    /// The full key of `relative` under the prefix.
    #[must_use]
    pub fn key(&self, relative: &str) -> String {
        if self.prefix.is_empty() {
            relative.to_owned()
        } else {
            format!("{}/{relative}", self.prefix)
        }
    }

    /// The prefix as a listing prefix (ends with `/` unless empty).
    #[must_use]
    pub fn list_prefix(&self) -> String {
        if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) }
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// A client configured from the environment. `force_path_style` is needed for S3 API servers
/// addressed by IP or `localhost` (the SDK would otherwise look up `bucket.localhost`).
pub async fn client(force_path_style: bool) -> Client {
    let shared = aws_config::load_defaults(BehaviorVersion::latest()).await;
    // A request that hangs (a black-holed connection, a stalled server) must end so that it
    // can be retried; an attempt may still take long enough for an 8 MiB part on a slow link.
    let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .read_timeout(std::time::Duration::from_mins(1))
        .operation_attempt_timeout(std::time::Duration::from_mins(2))
        .build();
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(force_path_style)
        .timeout_config(timeouts)
        .build();
    Client::from_conf(conf)
}

/// A readable one-line description of an SDK error (its `Display` is often only "service
/// error").
pub fn describe<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + 'static,
    R: fmt::Debug,
{
    use aws_sdk_s3::error::SdkError;
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            match (err.code(), err.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_owned(),
                _ => err.to_string(),
            }
        }
        SdkError::DispatchFailure(d) => format!("cannot reach S3: {d:?}"),
        SdkError::TimeoutError(_) => "S3 request timed out".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let l = S3Location::parse("s3://b/p/q/").unwrap().unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("b", "p/q"));
        assert_eq!(l.key("x/y"), "p/q/x/y");
        assert_eq!(l.to_string(), "s3://b/p/q");
        let bare = S3Location::parse("s3://b").unwrap().unwrap();
        assert_eq!(bare.key("x"), "x");
        assert_eq!(bare.list_prefix(), "");
        assert!(S3Location::parse("s3:///x").unwrap().is_err());
        assert!(S3Location::parse("/tmp/x").is_none());
    }
}
