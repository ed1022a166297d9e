//! Secrets the application needs at start when none is configured: the admin token
//! and the JWT signing key, generated once and kept where every process (and restart)
//! of the deployment finds them.

use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};

use super::StartError;
use crate::actors::directory::Directory;
use crate::config::Secret;
use crate::shards::catalog::SharedSecret;

pub fn random_secret(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// A secret shared by every process of the deployment, generated once and kept in
/// the catalog. Waits for the catalog actor to come up.
pub async fn shared_secret(directory: &Directory, name: &str) -> Result<Secret, StartError> {
    let mut last = String::new();
    for _ in 0..20 {
        let request = SharedSecret {
            name: name.into(),
            candidate: random_secret(48),
        };
        match directory.catalog.call(request).await {
            Ok(s) => return Ok(Secret::new(s)),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(StartError::Catalog(last))
}

/// A secret kept in a file readable by its owner only, generated when missing.
/// Answers the secret and whether it was made now (only then is it worth printing).
pub fn stored_secret(path: &std::path::Path) -> Result<(Secret, bool), StartError> {
    let err = |source| StartError::DataDir {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().len() >= 16 => return Ok((Secret::new(t.trim()), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let value = random_secret(40);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(err)?;
    std::io::Write::write_all(&mut file, value.as_bytes()).map_err(err)?;
    Ok((Secret::new(value), true))
}
