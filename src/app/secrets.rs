//! Secrets the application needs at start when none is configured: the admin token
//! and the JWT signing key, generated once and kept where every process (and restart)
//! of the deployment finds them.

use std::path::Path;
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

/// A secret kept in a file readable by its owner only (mode 0600, set again on a file
/// that had another), generated when missing or empty. A file that holds fewer than
/// `min_len` characters is refused: the settings demand that many, and a file is not
/// overwritten behind its writer's back. Answers the secret and whether it was made now
/// (only then is it worth printing).
pub fn stored_secret(path: &Path, min_len: usize) -> Result<(Secret, bool), StartError> {
    let err = |source| StartError::DataDir {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().is_empty() => {}
        Ok(t) if t.trim().len() < min_len => {
            let why = format!(
                "holds a secret of {} characters; at least {min_len} are needed (remove the file to have one generated)",
                t.trim().len()
            );
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                why,
            )));
        }
        Ok(t) => {
            owner_only(path, 0o600).map_err(err)?;
            return Ok((Secret::new(t.trim()), false));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let value = random_secret(min_len.max(40));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(err)?;
    owner_only(path, 0o600).map_err(err)?;
    std::io::Write::write_all(&mut file, value.as_bytes()).map_err(err)?;
    Ok((Secret::new(value), true))
}

/// The data directory, created when missing, readable by its owner only (0700): it
/// holds password hashes and the secrets, whatever the umask.
pub fn private_dir(path: &Path) -> Result<(), StartError> {
    let err = |source| StartError::DataDir {
        path: path.display().to_string(),
        source,
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path).map_err(err)?;
    owner_only(path, 0o700).map_err(err)
}

/// Sets `mode` on `path` when it has another (unix; elsewhere nothing).
fn owner_only(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let permissions = std::fs::metadata(path)?.permissions();
        if permissions.mode() & 0o777 != mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn scratch() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fs_secrets_{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn the_data_dir_and_its_secrets_are_the_owners_alone() {
        let dir = scratch();
        // A data dir made by hand (or by an older start) under umask 022.
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let fresh = dir.join("new").join("data");
        private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);

        // Generated when missing or empty, 0600.
        let token = dir.join("admin-token");
        let (made, new) = stored_secret(&token, 16).unwrap();
        assert!(new && made.expose().len() >= 16);
        assert_eq!(mode(&token), 0o600);
        // A secret file copied in with another mode is kept, and made 0600.
        let jwt = dir.join("jwt-secret");
        let key = "k".repeat(48);
        std::fs::write(&jwt, &key).unwrap();
        std::fs::set_permissions(&jwt, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (kept, new) = stored_secret(&jwt, 32).unwrap();
        assert!(!new);
        assert_eq!(kept.expose(), key);
        assert_eq!(mode(&jwt), 0o600);
        std::fs::write(&jwt, "").unwrap();
        assert!(
            stored_secret(&jwt, 32).unwrap().1,
            "an empty file is filled"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_secret_file_shorter_than_the_settings_demand_is_refused() {
        let dir = scratch();
        let jwt = dir.join("jwt-secret");
        std::fs::write(&jwt, "0123456789abcdef\n").unwrap();
        let err = stored_secret(&jwt, 32).unwrap_err().to_string();
        assert!(
            err.contains("16 characters") && err.contains("at least 32"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(&jwt).unwrap(),
            "0123456789abcdef\n",
            "left as it was"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
