//! Passwords (argon2id) and bearer tokens (JWT, HS256, with expiry).

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::{now_ms, Password, UserId};

pub fn hash_password(password: &Password) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.expose().as_bytes(), &salt)?
        .to_string())
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
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
        let mut validation = Validation::new(Algorithm::HS256);
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
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
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
        let t = Tokens::new(b"0123456789abcdef0123456789abcdef", 0);
        let mut v = t.clone();
        v.validation.leeway = 0;
        let issued = t.issue(&UserId::new_random());
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(v.verify(&issued.token), None);
    }

    #[test]
    fn passwords_verify() {
        let p = Password::parse("correct horse").unwrap();
        let h = hash_password(&p).unwrap();
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
    }
}
