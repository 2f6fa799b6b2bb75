//! Bearer tokens: JWT HS256 with a key id for rotation. Verification (and the constant-time
//! MAC comparison) is `jsonwebtoken`'s; this module picks the key and states the rules.

use entidb_sync::wire::Claims;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::config::KeyConfig;

/// Why a token was not accepted (always answered with 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// Not a JWT, a wrong algorithm, a bad signature or bad claims.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token's `kid` names no configured key.
    #[error("token signed with unknown key id {0:?}")]
    UnknownKey(String),
    /// The token has expired.
    #[error("token expired")]
    Expired,
}

/// Seconds of clock difference allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// The active signing keys.
#[derive(Clone)]
pub struct Keys {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keys").field("ids", &ids).finish()
    }
}

impl Keys {
    /// Keys from the configuration.
    pub fn new(keys: &[KeyConfig]) -> Keys {
        Keys {
            keys: keys
                .iter()
                .map(|k| (k.id.clone(), k.secret.as_bytes().to_vec()))
                .collect(),
        }
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies `token`: HS256 only; the key named by `kid` (or the only key when the token
    /// has no `kid` and one key is configured); `exp` required and checked with 30 s leeway.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted (use HS256)",
                header.alg
            )));
        }
        let secret = match &header.kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|(id, _)| id == kid)
                .map(|(_, s)| s)
                .ok_or_else(|| AuthError::UnknownKey(kid.clone()))?,
            None if self.keys.len() == 1 => &self.keys[0].1,
            None => {
                return Err(AuthError::Invalid(
                    "token has no kid and several keys are configured".into(),
                ));
            }
        };
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = LEEWAY_SECS;
        v.set_required_spec_claims(&["exp", "sub"]);
        // `nbf`, when present, is checked (with the same leeway); `aud` is not: tokens are
        // bound by their `db`, `sub` and `scope` claims, and a token some library minted
        // with an audience is not refused for it.
        v.validate_nbf = true;
        v.validate_aud = false;
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })
    }
}

/// Signs `claims` with the key `id`/`secret`.
pub fn mint(id: &str, secret: &[u8], claims: &Claims) -> Result<String, AuthError> {
    let header = Header {
        kid: Some(id.to_owned()),
        ..Header::new(Algorithm::HS256)
    };
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret))
        .map_err(|e| AuthError::Invalid(e.to_string()))
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "c1".into(),
            db: "app".into(),
            scope: vec!["read".into()],
            exp,
            iat: 0,
        }
    }

    const S1: &str = "0123456789abcdef0123456789abcdef";
    const S2: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn rotation_and_rejections() {
        let keys = Keys::new(&[
            KeyConfig {
                id: "k1".into(),
                secret: S1.into(),
            },
            KeyConfig {
                id: "k2".into(),
                secret: S2.into(),
            },
        ]);
        let future = now_secs() + 3600;
        let t1 = mint("k1", S1.as_bytes(), &claims(future)).expect("mint");
        let t2 = mint("k2", S2.as_bytes(), &claims(future)).expect("mint");
        assert_eq!(keys.verify(&t1).expect("k1").sub, "c1");
        assert_eq!(keys.verify(&t2).expect("k2").sub, "c1");
        // Signed with k2's secret but claiming k1.
        let forged = mint("k1", S2.as_bytes(), &claims(future)).expect("mint");
        assert!(matches!(keys.verify(&forged), Err(AuthError::Invalid(_))));
        let unknown = mint("k3", S1.as_bytes(), &claims(future)).expect("mint");
        assert_eq!(
            keys.verify(&unknown),
            Err(AuthError::UnknownKey("k3".into()))
        );
        let expired = mint("k1", S1.as_bytes(), &claims(now_secs() - 3600)).expect("mint");
        assert_eq!(keys.verify(&expired), Err(AuthError::Expired));
        assert!(keys.verify("not.a.token").is_err());
        assert!(keys.verify("").is_err());
        // A flipped signature byte.
        let mut bad = t1.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert!(
            keys.verify(&String::from_utf8(bad).expect("ascii"))
                .is_err()
        );
    }

    /// Tokens minted by another library: `nbf` is honoured, `aud` ignored, and no algorithm
    /// but HS256 (not `none`, not HS512 with the same secret) is accepted.
    #[test]
    fn foreign_claims_and_algorithms() {
        let keys = Keys::new(&[KeyConfig {
            id: "k1".into(),
            secret: S1.into(),
        }]);
        let sign = |alg: Algorithm, extra: serde_json::Value| {
            let mut claims = serde_json::json!({
                "sub": "c1", "db": "app", "scope": ["read"], "exp": now_secs() + 3600,
            });
            if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
                c.extend(e.clone());
            }
            let header = Header {
                kid: Some("k1".into()),
                ..Header::new(alg)
            };
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(S1.as_bytes()))
                .expect("encode")
        };
        let plain = sign(Algorithm::HS256, serde_json::json!({}));
        assert_eq!(keys.verify(&plain).expect("plain").sub, "c1");
        let early = sign(
            Algorithm::HS256,
            serde_json::json!({"nbf": now_secs() + 3600}),
        );
        let err = keys
            .verify(&early)
            .expect_err("not valid before an hour from now");
        assert!(err.to_string().contains("ImmatureSignature"), "{err}");
        // Within the leeway, `nbf` does not refuse a token of a slightly fast clock.
        let soon = sign(Algorithm::HS256, serde_json::json!({"nbf": now_secs() + 5}));
        assert!(keys.verify(&soon).is_ok());
        let aud = sign(Algorithm::HS256, serde_json::json!({"aud": "some-api"}));
        assert!(keys.verify(&aud).is_ok());
        let hs512 = sign(Algorithm::HS512, serde_json::json!({}));
        assert!(matches!(keys.verify(&hs512), Err(AuthError::Invalid(_))));
        // `alg: none` with no signature.
        let body = plain.split('.').nth(1).expect("a payload");
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{body}.");
        assert!(matches!(keys.verify(&none), Err(AuthError::Invalid(_))));
    }
}
