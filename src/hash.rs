//! MD5 as lowercase hex: content identities (S3 `Content-MD5` checks, input fingerprints,
//! archive listings) and stable keys, never a defence against forgery.

use md5::{Digest as _, Md5};
use std::fmt::Write as _;

/// The lowercase hex MD5 of `bytes` (32 characters).
#[must_use]
pub fn md5_hex(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

/// A digest (or any bytes) as lowercase hex.
#[must_use]
pub fn hex(digest: &[u8]) -> String {
    digest.iter().fold(String::with_capacity(2 * digest.len()), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn md5_of_nothing() {
        assert_eq!(super::md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
