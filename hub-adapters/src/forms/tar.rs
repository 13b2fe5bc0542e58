//! Tar recipes of the image form: the bytes around a file's content in its one-file layer.

use super::*;

// ---- tar recipes ----

const BLOCK: u64 = 512;
/// The largest size the 11 octal digits of a ustar header hold (8 GiB - 1).
const USTAR_MAX_SIZE: u64 = 0o777_7777_7777;
const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
const TYPE_FILE: u8 = b'0';
const TYPE_DIR: u8 = b'5';
const TYPE_PAX: u8 = b'x';

/// The tar bytes that come before a file's content in its image-form layer: entries for each
/// parent directory, then the file's header (long paths and sizes ≥ 8 GiB encoded so Go's
/// archive/tar and GNU tar read them). Deterministic: mtime 0, uid/gid 0, no user/group names,
/// dirs 0755, files 0644.
///
/// Headers are ustar (`ustar\0` `00`); a path that is not ASCII or does not fit ustar's
/// name/prefix split gets a PAX `path` record, a size ≥ 8 GiB a PAX `size` record, in a
/// preceding `x` entry named `PaxHeaders.0/<base name>` (as Go's writer does, whose rules these
/// follow).
pub fn tar_prefix(path: &str, size: u64) -> Result<Vec<u8>, FormError> {
    validate_path(path)?;
    let mut out = Vec::new();
    let mut end = 0;
    while let Some(i) = path[end..].find('/') {
        end += i + 1;
        write_entry(&mut out, &path[..end], TYPE_DIR, 0o755, 0);
    }
    write_entry(&mut out, path, TYPE_FILE, 0o644, size);
    Ok(out)
}

/// Zero bytes after the content: padding to a 512-byte block, then the 1024-byte end marker.
pub fn tar_suffix_len(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK + 2 * BLOCK
}

fn write_entry(out: &mut Vec<u8>, name: &str, typeflag: u8, mode: u32, size: u64) {
    let split = ustar_split(name);
    let mut records = Vec::new();
    if split.is_none() {
        records.push(("path", name.to_owned()));
    }
    if size > USTAR_MAX_SIZE {
        records.push(("size", size.to_string()));
    }
    if !records.is_empty() {
        let data = pax_records(&records);
        let base = to_ascii(basename(name.trim_end_matches('/')));
        let pax_name = truncate(&format!("PaxHeaders.0/{base}"), NAME_LEN).to_owned();
        out.extend_from_slice(&header(&pax_name, "", TYPE_PAX, 0o644, data.len() as u64));
        out.extend_from_slice(&data);
        pad(out);
    }
    let (prefix, short) = match split {
        Some(split) => split,
        None => ("", truncate(&to_ascii(name), NAME_LEN).to_owned()),
    };
    // A size that needs PAX is written as 0 in the ustar field, as Go does.
    let field_size = if size > USTAR_MAX_SIZE { 0 } else { size };
    out.extend_from_slice(&header(&short, prefix, typeflag, mode, field_size));
}

/// Go's `splitUSTARPath`: the whole name when it fits, else a prefix (≤ 155 bytes) and name
/// (≤ 100 bytes) split at a `/`. `None` when neither works or the name is not ASCII.
fn ustar_split(name: &str) -> Option<(&str, String)> {
    if !name.is_ascii() {
        return None;
    }
    if name.len() <= NAME_LEN {
        return Some(("", name.to_owned()));
    }
    let mut length = name.len();
    if length > PREFIX_LEN + 1 {
        length = PREFIX_LEN + 1;
    } else if name.as_bytes()[length - 1] == b'/' {
        length -= 1;
    }
    let i = name[..length].rfind('/')?;
    let suffix = &name[i + 1..];
    if i == 0 || suffix.is_empty() || suffix.len() > NAME_LEN || i > PREFIX_LEN {
        return None;
    }
    Some((&name[..i], suffix.to_owned()))
}

/// PAX records `"<len> <key>=<value>\n"`, `<len>` counting the whole record, itself included.
fn pax_records(records: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = rest + rest.to_string().len();
        if len.to_string().len() != rest.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {key}={value}\n").as_bytes());
    }
    out
}

fn header(name: &str, prefix: &str, typeflag: u8, mode: u32, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    put(&mut h[0..100], name.as_bytes());
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0); // mtime
    h[156] = typeflag;
    put(&mut h[257..263], b"ustar\0");
    put(&mut h[263..265], b"00");
    octal(&mut h[329..337], 0); // devmajor
    octal(&mut h[337..345], 0); // devminor
    put(&mut h[345..500], prefix.as_bytes());
    // Checksum: the header's bytes summed with the checksum field as spaces.
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    octal(&mut h[148..155], u64::from(sum));
    h
}

fn put(field: &mut [u8], bytes: &[u8]) {
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

/// Zero-padded octal digits filling all but the last byte of `field`, then NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    put(field, s.as_bytes());
    field[digits] = 0;
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % BLOCK as usize;
    if rem != 0 {
        out.resize(out.len() + BLOCK as usize - rem, 0);
    }
}

/// Go's `toASCII`: non-ASCII characters (and NUL) dropped.
fn to_ascii(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii() && *c != '\0').collect()
}

fn truncate(s: &str, max: usize) -> &str {
    // Only ever called on ASCII, where every index is a char boundary.
    &s[..s.len().min(max)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        // "9 a=bcd\n" is 8 bytes + the digit: 9. Crossing a digit boundary: a record whose
        // body is 98 bytes is 100 long with a 3-digit length, not 99 with 2 digits.
        for value_len in 0..2000 {
            let value = "v".repeat(value_len);
            let rec = pax_records(&[("path", value)]);
            let (len, _) = std::str::from_utf8(&rec).unwrap().split_once(' ').unwrap();
            assert_eq!(
                len.parse::<usize>().unwrap(),
                rec.len(),
                "value_len {value_len}"
            );
        }
    }

    #[test]
    fn ustar_split_follows_go() {
        assert_eq!(ustar_split("a/b"), Some(("", "a/b".to_owned())));
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        assert_eq!(ustar_split(&long), Some((&long[..120], "f".repeat(90))));
        // no slash, a last component over 100 bytes, a prefix over 155, not ASCII
        assert_eq!(ustar_split(&"x".repeat(101)), None);
        assert_eq!(ustar_split(&format!("d/{}", "f".repeat(101))), None);
        assert_eq!(ustar_split(&format!("{}/f", "d".repeat(156))), None);
        assert_eq!(ustar_split("模型/权重.bin"), None);
        // a directory name's trailing slash does not count as the split point
        let dir = format!("{}/{}/", "d".repeat(60), "e".repeat(60));
        assert_eq!(
            ustar_split(&dir),
            Some((&dir[..60], format!("{}/", "e".repeat(60))))
        );
    }

    #[test]
    fn header_checksum_and_fields() {
        let h = header("a.txt", "", TYPE_FILE, 0o644, 1234);
        assert_eq!(&h[100..108], b"0000644\0");
        assert_eq!(&h[124..136], b"00000002322\0");
        assert_eq!(&h[257..265], b"ustar\x0000");
        let mut sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        sum -= h[148..156].iter().map(|&b| u32::from(b)).sum::<u32>();
        sum += 8 * u32::from(b' ');
        let field = std::str::from_utf8(&h[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(field, 8).unwrap(), sum);
        assert_eq!(&h[154..156], b"\0 ");
    }
}
