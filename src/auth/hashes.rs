//! Password hashes as real user tables hold them: argon2 (PHC), bcrypt (`$2a$`/`$2b$`/`$2y$`), PBKDF2-SHA256
//! (Django's `pbkdf2_sha256$...` and passlib's `$pbkdf2-sha256$...`) and SHA-512-crypt (`$6$`, as in
//! `/etc/shadow`). Each is checked with the crate that implements it, off the async threads; comparisons are
//! constant-time inside those crates (ring's `pbkdf2::verify` for PBKDF2).

use std::num::NonZeroU32;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use tokio::sync::Semaphore;

use super::{Argon2Pool, AuthError};

/// The formats casd can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashFormat {
    Argon2,
    Bcrypt,
    Pbkdf2Sha256Django,
    Pbkdf2Sha256Passlib,
    Sha512Crypt,
}

impl HashFormat {
    /// The format of a stored hash, from its prefix; `None` for one casd cannot verify.
    pub fn of(hash: &str) -> Option<Self> {
        Some(match hash {
            h if h.starts_with("$argon2") => Self::Argon2,
            h if ["$2a$", "$2b$", "$2y$"].iter().any(|p| h.starts_with(p)) => Self::Bcrypt,
            h if h.starts_with("pbkdf2_sha256$") => Self::Pbkdf2Sha256Django,
            h if h.starts_with("$pbkdf2-sha256$") => Self::Pbkdf2Sha256Passlib,
            h if h.starts_with("$6$") => Self::Sha512Crypt,
            _ => return None,
        })
    }
}

/// Checks `password` against a stored hash of any [`HashFormat`]. argon2 runs in the shared argon2 pool (whose
/// memory stays bounded); the others on blocking threads, at most `cpu` at a time.
pub async fn verify_stored_hash(
    argon2: &Arc<Argon2Pool>,
    cpu: &Arc<Semaphore>,
    hash: &str,
    password: &str,
) -> Result<bool, AuthError> {
    let format = HashFormat::of(hash)
        .ok_or_else(|| AuthError::Backend(format!("unsupported password hash format (scheme {:?})", scheme(hash))))?;
    if format == HashFormat::Argon2 {
        return argon2.verify(hash.into(), password.to_owned()).await;
    }
    let permit = cpu.clone().acquire_owned().await.map_err(|e| AuthError::Backend(e.to_string()))?;
    let (hash, password) = (hash.to_owned(), zeroize::Zeroizing::new(password.to_owned()));
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        verify_now(format, &hash, &password)
    })
    .await
    .map_err(|e| AuthError::Backend(format!("password check thread failed: {e}")))?
}

/// The scheme marker of a stored hash (`$1$`, `{SSHA}`, `sha1$`), to name a format casd cannot verify; never any
/// of the salt or digest after it (a hash is a secret too). Empty when there is no short marker.
fn scheme(hash: &str) -> &str {
    let end = match hash.as_bytes().first() {
        Some(b'$') => hash[1..].find('$').map(|i| i + 2),
        Some(b'{') => hash.find('}').map(|i| i + 1),
        _ => {
            hash.find('$').filter(|&i| hash[..i].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).map(|i| i + 1)
        }
    };
    end.filter(|&e| e <= 24).map_or("", |e| &hash[..e])
}

fn verify_now(format: HashFormat, hash: &str, password: &str) -> Result<bool, AuthError> {
    let bad = |why: &str| AuthError::Backend(format!("unusable {format:?} hash: {why}"));
    match format {
        HashFormat::Argon2 => unreachable!("argon2 runs in its pool"),
        HashFormat::Bcrypt => bcrypt::verify(password, hash).map_err(|e| bad(&e.to_string())),
        HashFormat::Sha512Crypt => {
            use sha_crypt::PasswordVerifier;
            match sha_crypt::ShaCrypt::default().verify_password(password.as_bytes(), hash) {
                Ok(()) => Ok(true),
                Err(sha_crypt::password_hash::Error::PasswordInvalid) => Ok(false),
                Err(e) => Err(bad(&e.to_string())),
            }
        }
        HashFormat::Pbkdf2Sha256Django => {
            // pbkdf2_sha256$<iterations>$<salt, as text>$<base64 hash>
            let parts: Vec<&str> = hash.split('$').collect();
            let [_, iterations, salt, expected] = parts[..] else { return Err(bad("not four fields")) };
            let expected = STANDARD.decode(expected).map_err(|_| bad("hash is not base64"))?;
            pbkdf2(iterations, salt.as_bytes(), &expected, password).ok_or_else(|| bad("bad iteration count"))
        }
        HashFormat::Pbkdf2Sha256Passlib => {
            // $pbkdf2-sha256$<iterations>$<ab64 salt>$<ab64 hash>; ab64 is base64 with '.' for '+', unpadded.
            let parts: Vec<&str> = hash.split('$').collect();
            let [_, _, iterations, salt, expected] = parts[..] else { return Err(bad("not five fields")) };
            let ab64 = |s: &str| STANDARD_NO_PAD.decode(s.replace('.', "+"));
            let salt = ab64(salt).map_err(|_| bad("salt is not ab64"))?;
            let expected = ab64(expected).map_err(|_| bad("hash is not ab64"))?;
            pbkdf2(iterations, &salt, &expected, password).ok_or_else(|| bad("bad iteration count"))
        }
    }
}

fn pbkdf2(iterations: &str, salt: &[u8], expected: &[u8], password: &str) -> Option<bool> {
    let n = NonZeroU32::new(iterations.parse().ok()?)?;
    let alg = ring::pbkdf2::PBKDF2_HMAC_SHA256;
    Some(ring::pbkdf2::verify(alg, n, salt, password.as_bytes(), expected).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors for "correct horse" from independent implementations: Python's `hashlib.pbkdf2_hmac` written
    /// in Django's and passlib's layouts, and glibc's `crypt(3)` for SHA-512-crypt (with and without `rounds=`).
    const VECTORS: [&str; 4] = [
        "pbkdf2_sha256$1000$saltsalt1234$vCowWi1dB0WkHn96blKCnL2OG83kjxRxvy4fTd6Hm28=",
        "$pbkdf2-sha256$2000$AQIDBAUGBwgJEBESExQVFg$QLLeu/o1B36XAolhfF2LSKEzDnv4zCR82p/xpPrekWA",
        "$6$rounds=5000$abcdefgh12345678$hH3FjZZkD.RuGmIukoJ6X1/ojxI7Q6oXs70HmGNrON9WfqbLQ0xd/ksJZ6H.4WbnNfveboF8T745gOj/MOnsv.",
        "$6$abcdefgh12345678$hH3FjZZkD.RuGmIukoJ6X1/ojxI7Q6oXs70HmGNrON9WfqbLQ0xd/ksJZ6H.4WbnNfveboF8T745gOj/MOnsv.",
    ];

    #[tokio::test]
    async fn each_format_accepts_its_password_and_refuses_another() {
        let pool = Argon2Pool::new(1, 4);
        let cpu = Arc::new(Semaphore::new(2));
        let bcrypt = bcrypt::hash("correct horse", 4).expect("bcrypt");
        let argon = super::super::hash_password("correct horse").expect("argon2");
        for hash in VECTORS.iter().copied().chain([bcrypt.as_str(), argon.as_str()]) {
            assert!(HashFormat::of(hash).is_some(), "{hash}");
            assert!(verify_stored_hash(&pool, &cpu, hash, "correct horse").await.expect("verify"), "{hash}");
            assert!(!verify_stored_hash(&pool, &cpu, hash, "correct horsf").await.expect("verify"), "{hash}");
        }
    }

    #[tokio::test]
    async fn an_unknown_format_is_a_backend_error_that_does_not_print_the_hash() {
        let pool = Argon2Pool::new(1, 4);
        let cpu = Arc::new(Semaphore::new(1));
        let e = verify_stored_hash(&pool, &cpu, "{SSHA}c2VjcmV0c2VjcmV0", "x").await.expect_err("refused");
        assert!(matches!(&e, AuthError::Backend(m) if !m.contains("c2VjcmV0")), "{e:?}");
        assert!(matches!(&e, AuthError::Backend(m) if m.contains("\"{SSHA}\"") && !m.contains("c2Vj")), "{e:?}");
        assert_eq!(scheme("$1$saltsalt$digest"), "$1$");
        assert_eq!(scheme("sha1$salt$digest"), "sha1$");
        assert_eq!(scheme("c2VjcmV0c2VjcmV0"), "", "no marker: nothing of the hash");
    }
}
