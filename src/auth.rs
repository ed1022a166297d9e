//! Passwords (argon2id) and bearer tokens (JWT, HS256, with expiry).

use std::cell::RefCell;

use argon2::password_hash::{
    rand_core::OsRng, Output, ParamsString, PasswordHash, Salt, SaltString,
};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use jsonwebtoken::{Algorithm as JwtAlgorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::{now_ms, Password, UserId};

thread_local! {
    /// The memory of this thread's hashes (19 MiB for the default parameters), kept
    /// from one to the next: allocated afresh each time, the allocator keeps freed
    /// copies of it per thread, and a burst of logins grows the process by tens of MiB
    /// a hash.
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// The raw argon2 hash of `password` with `salt`, `len` bytes, in this thread's memory.
fn raw_hash(
    argon: &Argon2,
    params: &Params,
    password: &[u8],
    salt: Salt,
    len: usize,
) -> Result<Output, argon2::password_hash::Error> {
    let mut salt_bytes = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_bytes)?;
    BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        if blocks.len() < params.block_count() {
            blocks.resize(params.block_count(), Block::default());
        }
        let memory = &mut blocks[..params.block_count()];
        Output::init_with(len, |out| {
            Ok(argon.hash_password_into_with_memory(password, salt, out, &mut *memory)?)
        })
    })
}

/// An argon2id hash of `password` in PHC string form, with a fresh salt.
pub fn hash_password(password: &Password) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    let params = Params::default();
    let argon = Argon2::new(Algorithm::default(), Version::default(), params.clone());
    let len = Params::DEFAULT_OUTPUT_LEN;
    let hash = raw_hash(
        &argon,
        &params,
        password.expose().as_bytes(),
        salt.as_salt(),
        len,
    )?;
    Ok(PasswordHash {
        algorithm: Algorithm::default().ident(),
        version: Some(Version::default().into()),
        params: ParamsString::try_from(&params)?,
        salt: Some(salt.as_salt()),
        hash: Some(hash),
    }
    .to_string())
}

/// Whether `password` is the one `hash` (a PHC string) was made from; compared in
/// constant time.
pub fn verify_password(password: &str, hash: &str) -> bool {
    let verified = || -> Result<bool, argon2::password_hash::Error> {
        let h = PasswordHash::new(hash)?;
        let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
            return Ok(false);
        };
        let algorithm = Algorithm::try_from(h.algorithm)?;
        let version = h
            .version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let params = Params::try_from(&h)?;
        let argon = Argon2::new(algorithm, version, params.clone());
        let computed = raw_hash(&argon, &params, password.as_bytes(), salt, expected.len())?;
        Ok(computed == expected)
    };
    verified().unwrap_or(false)
}

/// A hash to verify against when the e-mail is unknown, so that both cases take the
/// same time.
pub fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&Password::parse("not-a-real-password").unwrap()).unwrap())
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
}

#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

pub struct Issued {
    pub token: String,
    pub expires_at_ms: i64,
}

impl Tokens {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(JwtAlgorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
        }
    }

    pub fn issue(&self, user: &UserId) -> Issued {
        let now = (now_ms() / 1000) as u64;
        let claims = Claims {
            sub: user.to_string(),
            iat: now,
            exp: now + self.ttl_secs,
        };
        let token =
            jsonwebtoken::encode(&Header::new(JwtAlgorithm::HS256), &claims, &self.encoding)
                .expect("HS256 signing cannot fail");
        Issued {
            token,
            expires_at_ms: (claims.exp * 1000) as i64,
        }
    }

    /// The user a valid, unexpired token names.
    pub fn verify(&self, token: &str) -> Option<UserId> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        UserId::parse(&data.claims.sub).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let t = Tokens::new(b"0123456789abcdef0123456789abcdef", 60);
        let user = UserId::new_random();
        let issued = t.issue(&user);
        assert_eq!(t.verify(&issued.token), Some(user));
        let other = Tokens::new(b"another-secret-another-secret-xx", 60);
        assert_eq!(other.verify(&issued.token), None);
        assert_eq!(t.verify("garbage"), None);
    }

    #[test]
    fn expired_tokens_are_refused() {
        let t = Tokens::new(b"0123456789abcdef0123456789abcdef", 60);
        let user = UserId::new_random();
        let now = (now_ms() / 1000) as u64;
        // Signed with the right key, so that only the expiry can refuse it; written
        // with its expiry already past rather than waiting for one to pass.
        let signed_until = |exp: u64| {
            let claims = Claims {
                sub: user.to_string(),
                iat: now - 3600,
                exp,
            };
            jsonwebtoken::encode(&Header::new(JwtAlgorithm::HS256), &claims, &t.encoding).unwrap()
        };
        assert_eq!(t.verify(&signed_until(now + 60)), Some(user.clone()));
        // A minute past its expiry: beyond the 5 s leeway for clock skew.
        assert_eq!(t.verify(&signed_until(now - 60)), None);
        // And what `issue` signs expires its TTL after it was issued.
        let expires = (t.issue(&user).expires_at_ms / 1000) as u64;
        assert!(
            (now + 60..=now + 61).contains(&expires),
            "issued at {now}, expires at {expires}"
        );
    }

    #[test]
    fn hashes_read_as_the_argon2_crate_reads_them_and_back() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let p = Password::parse("correct horse").unwrap();
        let ours = hash_password(&p).unwrap();
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert!(verify_password("correct horse", &theirs));
        assert!(!verify_password("correct horsf", &theirs));
        assert!(!verify_password(
            "correct horse",
            "$argon2id$v=19$m=8,t=1,p=1$bad"
        ));
    }

    #[test]
    fn passwords_verify() {
        let p = Password::parse("correct horse").unwrap();
        let h = hash_password(&p).unwrap();
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
    }
}
