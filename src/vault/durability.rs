//! How a new blob's name (its directory entry) reaches the disk on the vault's file system.
//! POSIX makes a new file's name durable only by an fsync of its directory, and that is what
//! the vault does by default. Two Linux file systems give a stronger fsync by design, under which
//! the directory fsync only costs a second device cache flush per recording:
//!
//! - **ext4.** With a journal, fsync commits the transaction that last changed the inode; the
//!   transaction that created it, and added its entry to the directory, is that one or an
//!   earlier one, and commits are ordered. Without a journal, fsync of a file just added to a
//!   directory writes that directory's blocks and inode too (`ext4_sync_parent`, there "since
//!   otherwise it will only be written by writeback, leaving a huge window during which a
//!   crash may lose the file").
//! - **XFS.** fsync forces the log up to the inode's last change; its creation, directory
//!   entry included, is one logged transaction before it.
//!
//! On those, a blob's fsync makes its name durable and the vault skips the directory fsync
//! (measured on the reference VM: one device flush fewer per recording, 5 to 10 % more bulk
//! ingest; docs/vault-format.md). Anything else — btrfs, network and FUSE file systems,
//! overlays, a type that cannot be found — keeps the directory fsync. The type is read once,
//! at start, from `/proc/self/mountinfo` (the mount whose device is the vault directory's); its
//! magic number alone would not do, since ext2 and ext3 mounted by their own drivers share
//! ext4's.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// How a blob file just created and fsynced gets its name made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewNames {
    /// The file's fsync makes its new directory entry durable (ext4, XFS).
    WithFileFsync,
    /// The directory is fsynced after the file.
    DirectoryFsync,
}

impl NewNames {
    /// What `dir`'s file system needs, and the file system type found (`None` when it could
    /// not be found, which means `DirectoryFsync`).
    pub fn of(dir: &Path) -> (NewNames, Option<String>) {
        let fs_type = std::fs::metadata(dir).ok().and_then(|meta| {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
            fs_type_of_device(&mountinfo, meta.dev()).map(str::to_owned)
        });
        (NewNames::for_fs_type(fs_type.as_deref()), fs_type)
    }

    /// The rule for a file system type as `/proc/self/mountinfo` names it.
    pub fn for_fs_type(fs_type: Option<&str>) -> NewNames {
        match fs_type {
            Some("ext4" | "xfs") => NewNames::WithFileFsync,
            _ => NewNames::DirectoryFsync,
        }
    }
}

/// The file system type of the mount whose device number is `dev` (`st_dev`), from the text of
/// `/proc/self/mountinfo` (proc(5): `id parent major:minor root mount-point options
/// [optional fields...] - type source super-options`). Every mount of one device (bind mounts)
/// has the same type; btrfs subvolumes, whose `st_dev` matches no line, get `None`.
pub fn fs_type_of_device(mountinfo: &str, dev: u64) -> Option<&str> {
    let wanted = format!("{}:{}", device_major(dev), device_minor(dev));
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        if fields.nth(2)? != wanted {
            return None;
        }
        fields.by_ref().find(|field| *field == "-")?;
        fields.next().filter(|fs_type| !fs_type.is_empty())
    })
}

/// The major number of a Linux device number (glibc's `gnu_dev_major` encoding).
fn device_major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

/// The minor number of a Linux device number (glibc's `gnu_dev_minor` encoding).
fn device_minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,discard
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:45 / /var/lib/callguard\\040data rw,relatime shared:30 master:2 - xfs /dev/sdb1 rw,attr2
25 22 259:65539 / /mnt/big rw,relatime - btrfs /dev/nvme0n1p3 rw,ssd
26 22 253:1 /srv /srv/bound rw,relatime shared:1 - ext4 /dev/vda1 rw,discard
27 22 0:46 / /broken rw,relatime shared:31 -
";

    fn dev(major: u64, minor: u64) -> u64 {
        // glibc's gnu_dev_makedev.
        ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
    }

    #[test]
    fn finds_the_type_of_a_device_past_optional_fields_and_escaped_paths() {
        assert_eq!(fs_type_of_device(MOUNTINFO, dev(253, 1)), Some("ext4"));
        assert_eq!(fs_type_of_device(MOUNTINFO, dev(0, 45)), Some("xfs"));
        assert_eq!(fs_type_of_device(MOUNTINFO, dev(0, 21)), Some("proc"));
        // A minor number past 255 uses the split encoding.
        assert_eq!(fs_type_of_device(MOUNTINFO, dev(259, 65539)), Some("btrfs"));
        assert_eq!(fs_type_of_device(MOUNTINFO, dev(8, 3)), None);
        assert_eq!(fs_type_of_device(MOUNTINFO, dev(0, 46)), None);
        assert_eq!(fs_type_of_device("", dev(253, 1)), None);
    }

    #[test]
    fn device_numbers_split_as_glibc_does() {
        for (major, minor) in [(0, 0), (8, 1), (253, 255), (259, 65539), (4095, 1 << 19)] {
            let dev = dev(major, minor);
            assert_eq!((device_major(dev), device_minor(dev)), (major, minor));
        }
    }

    #[test]
    fn only_ext4_and_xfs_skip_the_directory_fsync() {
        assert_eq!(NewNames::for_fs_type(Some("ext4")), NewNames::WithFileFsync);
        assert_eq!(NewNames::for_fs_type(Some("xfs")), NewNames::WithFileFsync);
        for other in [
            Some("ext3"),
            Some("ext2"),
            Some("btrfs"),
            Some("tmpfs"),
            None,
        ] {
            assert_eq!(NewNames::for_fs_type(other), NewNames::DirectoryFsync);
        }
    }

    #[test]
    fn the_vault_directory_s_own_file_system_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (rule, fs_type) = NewNames::of(dir.path());
        assert_eq!(rule, NewNames::for_fs_type(fs_type.as_deref()));
        // The root file system of any Linux machine running the tests is in its mountinfo.
        assert!(NewNames::of(Path::new("/")).1.is_some());
        let missing = dir.path().join("missing");
        assert_eq!(NewNames::of(&missing), (NewNames::DirectoryFsync, None));
    }
}
