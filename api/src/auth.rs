//! Who is calling: password hashing, and the access tokens that say who the caller of a request
//! is (the extractors that read them are in `routes::extract`).

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use switchboard_schemas::UserId;

use crate::error::ApiError;

/// The shortest secret that may sign tokens: HS256 keys shorter than its 32-byte hash are
/// guessable offline from any one token.
pub const MIN_SECRET_BYTES: usize = 32;

/// Signs and checks access tokens (HS256 JWTs).
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: i64,
    exp: i64,
}

/// A freshly issued token.
#[derive(Debug, Serialize)]
pub struct Issued {
    pub token: String,
    pub expires_at: i64,
}

impl Tokens {
    /// Uses `secret` when given, otherwise the one kept in `data_dir`, generating it on first use.
    /// Refuses a secret shorter than [`MIN_SECRET_BYTES`].
    pub fn new(secret: Option<&str>, data_dir: &Path, ttl: Duration) -> anyhow::Result<Tokens> {
        let secret = match secret {
            Some(secret) => secret.as_bytes().to_vec(),
            None => stored_secret(data_dir)?,
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        Ok(Tokens {
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            validation,
            ttl,
        })
    }

    pub fn issue(&self, user: UserId) -> Issued {
        let now = switchboard_ingest::now_ms() / 1000;
        let exp = now + self.ttl.as_secs() as i64;
        let claims = Claims { sub: user.to_string(), iat: now, exp };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail");
        Issued { token, expires_at: exp * 1000 }
    }

    pub fn verify(&self, token: &str) -> Result<UserId, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::token_expired(),
                _ => ApiError::unauthorized("the access token is not valid"),
            })?;
        data.claims
            .sub
            .parse()
            .map_err(|_| ApiError::unauthorized("the access token names no user"))
    }
}

fn stored_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join("jwt-secret");
    if let Ok(secret) = std::fs::read(&path) {
        if secret.len() < MIN_SECRET_BYTES {
            bail!(
                "the token secret in {} is {} bytes long; it must be at least {MIN_SECRET_BYTES} \
                 (delete the file to have a new one generated, which logs every user out)",
                path.display(),
                secret.len()
            );
        }
        return Ok(secret);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let secret: [u8; 32] = rand::random();
    let text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, text.as_bytes())
        .with_context(|| format!("writing the token secret to {}", path.display()))?;
    Ok(text.into_bytes())
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

type HashJob = Box<dyn FnOnce(&Argon2<'static>) + Send>;

/// Runs argon2 on a few threads of its own, one per core. Each hash takes about 19 MiB and tens
/// of milliseconds of CPU; run on the shared blocking pool, hashes would spread over dozens of
/// threads, each keeping an allocator arena of that size long after (gigabytes after a burst of
/// registrations), and would compete with the storage engines' blocking work.
async fn argon2<T: Send + 'static>(
    work: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
) -> Result<T, ApiError> {
    static JOBS: OnceLock<Mutex<std::sync::mpsc::Sender<HashJob>>> = OnceLock::new();
    let jobs = JOBS.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel::<HashJob>();
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..std::thread::available_parallelism().map_or(1, |n| n.get()) {
            let receiver = Arc::clone(&receiver);
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    let argon2 = Argon2::default();
                    // The lock is held only while taking a job, not while running it.
                    while let Ok(job) = { receiver.lock().expect("hash queue").recv() } {
                        job(&argon2);
                    }
                })
                .expect("starting a password-hashing thread");
        }
        Mutex::new(sender)
    });
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job: HashJob = Box::new(move |argon2| {
        let _ = reply.send(work(argon2));
    });
    jobs.lock()
        .expect("hash queue")
        .send(job)
        .map_err(|_| ApiError::internal("password hashing stopped"))?;
    answer.await.map_err(|_| ApiError::internal("password hashing failed"))
}

/// Hashes a password with argon2id (deliberately slow).
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    argon2(move |argon2| {
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
            .map_err(|e| ApiError::internal(format!("salt: {e}")))?;
        argon2
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| ApiError::internal(format!("password hashing failed: {e}")))
    })
    .await?
}

pub async fn verify_password(password: String, hash: String) -> bool {
    argon2(move |argon2| {
        PasswordHash::new(&hash)
            .is_ok_and(|parsed| argon2.verify_password(password.as_bytes(), &parsed).is_ok())
    })
    .await
    .unwrap_or(false)
}

/// The authenticated user of a request, from `Authorization: Bearer <token>`.
#[derive(Clone, Copy, Debug)]
pub struct Caller(pub UserId);

/// The authenticated user of a request a browser makes without letting the page set headers:
/// the WebSocket upgrade, and a media download as the source of an `<img>` or `<video>`. Besides
/// the header, these take the token as a `token` query parameter. No other route does: URLs end
/// up in access logs, browser histories and `Referer` headers.
#[derive(Clone, Copy, Debug)]
pub struct LinkCaller(pub UserId);

/// The access token a request carries, wherever it carries it: who the caller is for rate
/// limiting, before a route decides whether it accepts the token where it was given.
pub fn presented_token(parts: &Parts) -> Option<&str> {
    header_token(parts).or_else(|| query_token(parts))
}

pub fn header_token(parts: &Parts) -> Option<&str> {
    let header = parts.headers.get(axum::http::header::AUTHORIZATION)?;
    header.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// The `token` query parameter, as-is: JWTs need no percent-decoding.
pub fn query_token(parts: &Parts) -> Option<&str> {
    parts.uri.query()?.split('&').find_map(|pair| pair.strip_prefix("token="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::new(None, dir.path(), Duration::from_secs(60)).unwrap();
        let issued = tokens.issue(UserId(42));
        assert_eq!(tokens.verify(&issued.token).unwrap(), UserId(42));

        // The generated secret is kept: a restarted node accepts the same token.
        let again = Tokens::new(None, dir.path(), Duration::from_secs(60)).unwrap();
        assert_eq!(again.verify(&issued.token).unwrap(), UserId(42));

        let other = Tokens::new(
            Some("another secret, as long as a secret must be"),
            dir.path(),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(other.verify(&issued.token).unwrap_err().code, "unauthorized");

        let expired = Tokens::new(None, dir.path(), Duration::ZERO).unwrap();
        let stale = expired.issue(UserId(42));
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(tokens.verify(&stale.token).unwrap_err().code, "token_expired");
    }

    #[test]
    fn a_short_or_empty_kept_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for kept in ["", "short"] {
            std::fs::write(dir.path().join("jwt-secret"), kept).unwrap();
            let error = Tokens::new(None, dir.path(), Duration::from_secs(60)).err().unwrap();
            assert!(error.to_string().contains("at least 32"), "{error}");
        }
    }

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), hash.clone()).await);
        assert!(!verify_password("wrong horse".into(), hash).await);
    }
}
