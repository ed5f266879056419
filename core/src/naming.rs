//! Where a registry lives when only a name is given: one file per nginx prefix, name
//! and Lua subsystem, so that two nginx instances, or the http and stream Lua of one
//! nginx, never share one. The CLI (`--shm`) and, through the C ABI
//! (`wm_default_path`), the Lua module (`shm`, `default_path`) check and derive it
//! here.

use std::path::PathBuf;

/// The default directory of registries: a tmpfs.
pub const DEFAULT_DIR: &str = "/dev/shm";

/// Checks that `name` can name a registry: it becomes part of a file name, so it
/// holds ASCII letters, digits, '_', '.' and '-' only, and at least one. The error
/// says why, to follow the name of what was given: "option 'shm' may only hold ...".
///
/// # Errors
///
/// The reason, for an empty name or one with another character.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "may only hold letters, digits, '_', '.' and '-', got '{name}'"
        ))
    }
}

/// CRC-32 (IEEE 802.3, as zlib's `crc32` and nginx's `ngx.crc32_long`).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// `/dev/shm/worker-manager.<name>.<crc32 of prefix>.wm` for the `http` subsystem,
/// `/dev/shm/worker-manager.<name>.<subsystem>.<crc32 of prefix>.wm` for another
/// (`stream`); `prefix` as nginx reports it (`ngx.config.prefix()`, with its
/// trailing slash).
pub fn default_path(prefix: &str, name: &str, subsystem: &str) -> PathBuf {
    default_path_of_bytes(prefix.as_bytes(), name, subsystem)
}

/// [`default_path`] of a prefix of any bytes, as nginx's may be (the C ABI's
/// `wm_default_path`).
pub fn default_path_of_bytes(prefix: &[u8], name: &str, subsystem: &str) -> PathBuf {
    let crc = crc32(prefix);
    PathBuf::from(match subsystem {
        "http" => format!("{DEFAULT_DIR}/worker-manager.{name}.{crc}.wm"),
        other => format!("{DEFAULT_DIR}/worker-manager.{name}.{other}.{crc}.wm"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_part_of_a_file_name() {
        for name in ["wm", "my_shm", "a.b-c", "X9"] {
            assert_eq!(check_name(name), Ok(()));
        }
        for name in ["", "a/b", "x y", "../x", "a\0b", "é"] {
            let reason = check_name(name).unwrap_err();
            assert!(reason.starts_with("may only hold letters"), "{reason}");
            assert!(reason.ends_with(&format!("got '{name}'")), "{reason}");
        }
    }

    #[test]
    fn crc32_matches_the_reference_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let crc = crc32(b"/usr/local/openresty/nginx/");
        assert_eq!(
            default_path("/usr/local/openresty/nginx/", "wm", "http"),
            PathBuf::from(format!("/dev/shm/worker-manager.wm.{crc}.wm"))
        );
        assert_eq!(
            default_path("/usr/local/openresty/nginx/", "wm", "stream"),
            PathBuf::from(format!("/dev/shm/worker-manager.wm.stream.{crc}.wm"))
        );
    }
}
