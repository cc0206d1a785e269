//! File-system safety checks on what the configuration points at: secret files readable only
//! by their owner, a data directory nobody else can write. Returns reasons, not `ConfigError`s:
//! the caller knows the key.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A secret file: exists, is a regular file, and no group/other permission bit is set
/// (garage's `read_secret_file` rule). Also checks the size of a master key file.
pub fn check_secret_file(path: &Path) -> Result<(), String> {
    check_secret_file_mode(path)?;
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    match len {
        32 | 64 | 65 => Ok(()),
        other => Err(format!(
            "{} holds {other} bytes; a master key is 32 random bytes or 64 hexadecimal characters",
            path.display()
        )),
    }
}

/// Mode check only: no permission for group or others.
pub fn check_secret_file_mode(path: &Path) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}: a secret must not be readable by group or others (chmod 0400)",
            path.display()
        ));
    }
    Ok(())
}

/// The data directory: exists, is a directory, not writable by others.
pub fn check_private_dir(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot use {}: {e} (run `callguard init`)", path.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", path.display()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o002 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}: it must not be writable by others (chmod 0700)",
            path.display()
        ));
    }
    Ok(())
}

/// A directory that must exist (the spool): the recorder's group may write there.
pub fn check_existing_dir(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot use {}: {e} (run `callguard init`)", path.display()))?;
    match meta.is_dir() {
        true => Ok(()),
        false => Err(format!("{} is not a directory", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_readable_by_group_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        std::fs::write(&path, [1u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
        let reason = check_secret_file(&path).unwrap_err();
        assert!(reason.contains("mode 0440"), "{reason}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        check_secret_file(&path).unwrap();
    }

    #[test]
    fn key_of_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        std::fs::write(&path, [1u8; 16]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(check_secret_file(&path).unwrap_err().contains("16 bytes"));
    }

    #[test]
    fn world_writable_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            check_private_dir(dir.path())
                .unwrap_err()
                .contains("writable by others")
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        check_private_dir(dir.path()).unwrap();
    }
}
