//! Where a registry lives when only a name is given: one file per nginx prefix and
//! name, so that two nginx instances never share one. The Lua module derives the
//! same path (`resty.worker.manager.default_path`).

use std::path::PathBuf;

/// The default directory of registries: a tmpfs.
pub const DEFAULT_DIR: &str = "/dev/shm";

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

/// `/dev/shm/worker-manager.<name>.<crc32 of prefix>.wm`; `prefix` as nginx reports
/// it (`ngx.config.prefix()`, with its trailing slash).
pub fn default_path(prefix: &str, name: &str) -> PathBuf {
    PathBuf::from(format!(
        "{DEFAULT_DIR}/worker-manager.{name}.{}.wm",
        crc32(prefix.as_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_reference_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            default_path("/usr/local/openresty/nginx/", "wm"),
            PathBuf::from(format!(
                "/dev/shm/worker-manager.wm.{}.wm",
                crc32(b"/usr/local/openresty/nginx/")
            ))
        );
    }
}
