//! Files Manta owns inside another program's configuration: marked, backed up once, atomically
//! replaced, and restorable.
//!
//! Crash story: a foreign file is hard-linked to `<name>.manta-backup` before the new content is
//! renamed over it, so at every instant `<name>` holds either the old or the new bytes, and the
//! backup, once it exists, holds the old bytes. A temp file left by a crash is named
//! `.<name>.manta-tmp.<pid>`, which neither containerd nor CRI-O reads (CRI-O reads `*.conf`).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::MirrorConfigError;

/// First line of every file Manta writes; how a later run knows the file is its own.
pub(crate) const MARKER: &str = "# Written by manta mirror-config";

pub(crate) fn is_ours(bytes: &[u8]) -> bool {
    bytes.starts_with(MARKER.as_bytes())
}

pub(crate) fn backup_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".manta-backup");
    PathBuf::from(s)
}

/// What [`install`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Installed {
    /// There was no file.
    Written,
    /// Manta's own file, with other content, was replaced.
    Updated,
    /// Manta's own file already had this content; nothing was written.
    Unchanged,
    /// A foreign file was moved to `backup` and replaced.
    BackedUp { backup: PathBuf },
}

impl fmt::Display for Installed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Installed::Written => f.write_str("written"),
            Installed::Updated => f.write_str("updated"),
            Installed::Unchanged => f.write_str("unchanged"),
            Installed::BackedUp { backup } => {
                write!(
                    f,
                    "written (the previous file is backed up as {})",
                    backup.display()
                )
            }
        }
    }
}

/// Makes `path` hold `content`, which must start with [`MARKER`].
pub(crate) fn install(path: &Path, content: &str) -> Result<Installed, MirrorConfigError> {
    debug_assert!(is_ours(content.as_bytes()));
    let backup = backup_path(path);
    match read_optional(path)? {
        None => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
            }
            write_atomic(path, content.as_bytes())?;
            Ok(Installed::Written)
        }
        Some(old) if is_ours(&old) => {
            if old == content.as_bytes() {
                return Ok(Installed::Unchanged);
            }
            write_atomic(path, content.as_bytes())?;
            Ok(Installed::Updated)
        }
        Some(_) => {
            if exists(&backup)? {
                return Err(MirrorConfigError::BackupExists {
                    path: path.to_owned(),
                    backup,
                });
            }
            keep_backup(path, &backup)?;
            write_atomic(path, content.as_bytes())?;
            Ok(Installed::BackedUp { backup })
        }
    }
}

/// What [`restore`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Restored {
    /// The backup was put back.
    FromBackup { backup: PathBuf },
    /// Manta's file was removed; there was no backup.
    Removed,
    /// The file is not Manta's and was left alone (`backup` names a backup left in place).
    NotOurs { backup: Option<PathBuf> },
    /// Neither a file nor a backup.
    Nothing,
}

/// Undoes [`install`]: never touches a file Manta did not write.
pub(crate) fn restore(path: &Path) -> Result<Restored, MirrorConfigError> {
    let backup = backup_path(path);
    let put_back = |backup: PathBuf| -> Result<Restored, MirrorConfigError> {
        fs::rename(&backup, path).map_err(io_err("restore backup", &backup))?;
        sync_parent(path)?;
        Ok(Restored::FromBackup { backup })
    };
    match read_optional(path)? {
        Some(bytes) if is_ours(&bytes) => {
            if exists(&backup)? {
                put_back(backup)
            } else {
                fs::remove_file(path).map_err(io_err("remove", path))?;
                sync_parent(path)?;
                Ok(Restored::Removed)
            }
        }
        Some(_) => Ok(Restored::NotOurs {
            backup: exists(&backup)?.then_some(backup),
        }),
        // Only the backup: Manta's file was removed by hand (or never renamed into place).
        None if exists(&backup)? => put_back(backup),
        None => Ok(Restored::Nothing),
    }
}

/// Keeps the bytes (and mode, owner, or symlink) of `path` at `backup`; fails if `backup` exists.
fn keep_backup(path: &Path, backup: &Path) -> Result<(), MirrorConfigError> {
    match fs::hard_link(path, backup) {
        Ok(()) => {}
        // Filesystems without hard links: copy through a temp file, then rename into place.
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            let bytes = fs::read(path).map_err(io_err("read", path))?;
            write_atomic(backup, &bytes)?;
        }
        Err(e) => return Err(io_err("back up to", backup)(e)),
    }
    sync_parent(backup)
}

/// Writes `bytes` to a temp file beside `path`, syncs it, and renames it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), MirrorConfigError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.manta-tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = open_new(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("rename into place", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_parent(path)
}

fn open_new(tmp: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    // A temp file of ours from a crashed run with the same pid.
    match fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(tmp)
}

fn sync_parent(path: &Path) -> Result<(), MirrorConfigError> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, MirrorConfigError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

pub(crate) fn exists(path: &Path) -> Result<bool, MirrorConfigError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> MirrorConfigError + 'a {
    move |source| MirrorConfigError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_and_restore_round_trip_a_foreign_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        fs::write(&path, b"foreign\n").unwrap();
        let ours = format!("{MARKER}\nserver = \"x\"\n");
        let got = install(&path, &ours).unwrap();
        assert_eq!(
            got,
            Installed::BackedUp {
                backup: backup_path(&path)
            }
        );
        assert_eq!(install(&path, &ours).unwrap(), Installed::Unchanged);
        assert_eq!(
            install(&path, &format!("{ours}# more\n")).unwrap(),
            Installed::Updated
        );
        assert_eq!(fs::read(backup_path(&path)).unwrap(), b"foreign\n");
        assert!(matches!(
            restore(&path).unwrap(),
            Restored::FromBackup { .. }
        ));
        assert_eq!(fs::read(&path).unwrap(), b"foreign\n");
        assert!(!backup_path(&path).exists());
        assert_eq!(restore(&path).unwrap(), Restored::NotOurs { backup: None });
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.toml"], "no temp file is left behind");
    }

    #[test]
    fn a_second_foreign_file_is_not_backed_up_over_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        fs::write(&path, b"new foreign\n").unwrap();
        fs::write(backup_path(&path), b"old foreign\n").unwrap();
        let err = install(&path, &format!("{MARKER}\n")).unwrap_err();
        assert!(matches!(err, MirrorConfigError::BackupExists { .. }));
        assert_eq!(fs::read(&path).unwrap(), b"new foreign\n");
        assert_eq!(fs::read(backup_path(&path)).unwrap(), b"old foreign\n");
    }
}
