//! The data directory's permission rules, whatever the store in it: its
//! owner's alone (0700, files 0600), refused when anyone else may write it.

use std::{fs, path::Path};

use super::StoreError;

/// Refuses `dir` if it, or anything in it, belongs to another user or is
/// writable by group or others, saying how to fix it.
#[cfg(unix)]
pub(super) fn refuse_exposed(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let metadata = fs::symlink_metadata(&path).map_err(|e| {
            StoreError::unavailable(format!("cannot inspect {}", path.display()), e)
        })?;
        let exposed = |problem: String| StoreError::Exposed {
            path: path.clone(),
            problem,
        };
        if metadata.uid() != me {
            return Err(exposed(format!(
                "owned by uid {}, not by the user running sts-server (uid {me}): another user could replace the token store; run sts-server as that user, or `chown -R {me} {}`",
                metadata.uid(),
                dir.display()
            )));
        }
        let mode = metadata.mode() & 0o7777;
        if mode & 0o022 != 0 {
            let who = if mode & 0o002 != 0 {
                "anyone"
            } else {
                "its group"
            };
            return Err(exposed(format!(
                "writable by {who} (mode {mode:04o}): they could replace the token store; run `chmod -R go-w {}` (sts-server creates it 0700)",
                dir.display()
            )));
        }
        if metadata.is_dir() {
            for entry in fs::read_dir(&path).map_err(|e| {
                StoreError::unavailable(format!("cannot list {}", path.display()), e)
            })? {
                let entry = entry.map_err(|e| {
                    StoreError::unavailable(format!("cannot list {}", path.display()), e)
                })?;
                pending.push(entry.path());
            }
        }
    }
    Ok(())
}

#[cfg(not(unix))]
pub(super) fn refuse_exposed(_dir: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Every file under `dir` readable and writable by its owner alone.
#[cfg(unix)]
pub(super) fn make_files_private(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let fail =
            |e| StoreError::unavailable(format!("cannot make {} private", path.display()), e);
        for entry in fs::read_dir(&path).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            let kind = entry.file_type().map_err(fail)?;
            let mode = if kind.is_dir() {
                pending.push(entry.path());
                0o700
            } else if kind.is_file() {
                0o600
            } else {
                continue;
            };
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode)).map_err(fail)?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
pub(super) fn make_files_private(_dir: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// The data directory holds token hashes and metadata: keep it to its owner.
/// Only the last component is created: a missing parent more likely means a
/// volume that is not mounted than a tree to make, and tokens written to the
/// wrong disk would vanish with it.
pub(super) fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let fail = |why: String, e: std::io::Error| {
        StoreError::unavailable(
            format!("cannot create the data directory {}{why}", dir.display()),
            e,
        )
    };
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    match builder.create(dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.is_dir() => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            Err(fail(
                format!(
                    ": its parent {} does not exist (is the volume mounted?)",
                    parent.display()
                ),
                e,
            ))
        }
        Err(e) => Err(fail(String::new(), e)),
    }
}
