//! Splitting an RFC 5322 header section into fields, without copying.
//!
//! This is the one place that reads header lines from the network. It accepts CRLF and bare LF
//! line ends (LF-only files exist), unfolds continuation lines, and bounds the work: at most
//! [`MAX_FIELDS`] fields of at most [`MAX_FIELD_LEN`] octets each.

use std::borrow::Cow;

/// More header fields than any real MM4 PDU has; a mail with more is refused.
pub const MAX_FIELDS: usize = 1000;
/// Longest accepted header field including its continuation lines.
pub const MAX_FIELD_LEN: usize = 64 * 1024;

/// One header field as it was on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawField<'a> {
    /// The field name as written (compare it case-insensitively).
    pub name: &'a str,
    /// The value as written, folding included, without the final line end.
    pub raw_value: &'a [u8],
}

impl<'a> RawField<'a> {
    /// The unfolded value (RFC 5322 §2.2.3), trimmed, as text. Non-UTF-8 octets are replaced;
    /// MM4 header values are ASCII by definition (RFC 2047 covers the rest).
    pub fn value(&self) -> Cow<'a, str> {
        let raw = self.raw_value;
        let needs_unfold = raw.iter().any(|&b| b == b'\r' || b == b'\n');
        if !needs_unfold {
            return match String::from_utf8_lossy(raw) {
                Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
                Cow::Owned(s) => Cow::Owned(s.trim().to_string()),
            };
        }
        let unfolded: Vec<u8> = raw
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        Cow::Owned(String::from_utf8_lossy(&unfolded).trim().to_string())
    }

    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// Why a header section could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("line {line}: not a header field (no ':' after a field name)")]
    NotAField { line: usize },
    #[error("line {line}: continuation line before any header field")]
    LeadingContinuation { line: usize },
    #[error("more than {MAX_FIELDS} header fields")]
    TooManyFields,
    #[error("header field {name} longer than {MAX_FIELD_LEN} octets")]
    FieldTooLong { name: String },
    #[error("empty message: no header fields")]
    Empty,
}

/// A header section and where the body starts.
#[derive(Debug, Clone)]
pub struct Split<'a> {
    pub fields: Vec<RawField<'a>>,
    /// Offset of the first body octet (after the blank line); `input.len()` when there is none.
    pub body_offset: usize,
}

fn is_ftext(b: u8) -> bool {
    // RFC 5322 field-name: printable US-ASCII except ':'.
    (33..=126).contains(&b) && b != b':'
}

/// Pushes the field that spans `input[name_start..end]` (value from `value_start`).
fn finish<'a>(
    input: &'a [u8],
    fields: &mut Vec<RawField<'a>>,
    (name_start, name_end, value_start): (usize, usize, usize),
    end: usize,
) -> Result<(), HeaderError> {
    // The name consists of printable ASCII only, so it is UTF-8.
    let name = std::str::from_utf8(&input[name_start..name_end]).unwrap_or("");
    if end - name_start > MAX_FIELD_LEN {
        return Err(HeaderError::FieldTooLong {
            name: name.to_string(),
        });
    }
    if fields.len() >= MAX_FIELDS {
        return Err(HeaderError::TooManyFields);
    }
    let value = trim_eol(&input[value_start..end.max(value_start)]);
    fields.push(RawField {
        name,
        raw_value: value,
    });
    Ok(())
}

/// Splits `input` into header fields and the body offset.
pub fn split(input: &[u8]) -> Result<Split<'_>, HeaderError> {
    let mut fields: Vec<RawField<'_>> = Vec::new();
    let mut pos = 0;
    let mut line_no = 0;
    // (name start, name end, value start) of the field being read.
    let mut current: Option<(usize, usize, usize)> = None;
    let mut body_offset = input.len();

    while pos < input.len() {
        line_no += 1;
        let line_end = match memchr::memchr(b'\n', &input[pos..]) {
            Some(i) => pos + i + 1,
            None => input.len(),
        };
        let content = trim_eol(&input[pos..line_end]);
        if content.is_empty() {
            // The blank line that ends the header section.
            if let Some(cur) = current.take() {
                finish(input, &mut fields, cur, pos)?;
            }
            body_offset = line_end;
            break;
        }
        if content[0] == b' ' || content[0] == b'\t' {
            match current {
                // Checked per line so a never-ending field is stopped early.
                Some((ns, ne, _)) if line_end - ns > MAX_FIELD_LEN => {
                    return Err(HeaderError::FieldTooLong {
                        name: String::from_utf8_lossy(&input[ns..ne]).into_owned(),
                    });
                }
                Some(_) => {}
                None => return Err(HeaderError::LeadingContinuation { line: line_no }),
            }
        } else {
            if let Some(cur) = current.take() {
                finish(input, &mut fields, cur, pos)?;
            }
            let name_len = content.iter().take_while(|&&b| is_ftext(b)).count();
            // Tolerate white space between the name and the colon (obs-field, RFC 5322 §4.5.3).
            let mut colon = name_len;
            while colon < content.len() && (content[colon] == b' ' || content[colon] == b'\t') {
                colon += 1;
            }
            if name_len == 0 || colon >= content.len() || content[colon] != b':' {
                return Err(HeaderError::NotAField { line: line_no });
            }
            current = Some((pos, pos + name_len, pos + colon + 1));
        }
        pos = line_end;
    }
    if let Some(cur) = current.take() {
        finish(input, &mut fields, cur, input.len())?;
    }
    if fields.is_empty() {
        return Err(HeaderError::Empty);
    }
    Ok(Split {
        fields,
        body_offset,
    })
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let mut l = line;
    if let [rest @ .., b'\n'] = l {
        l = rest;
    }
    if let [rest @ .., b'\r'] = l {
        l = rest;
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_crlf_and_lf_and_unfolds() {
        let m = b"A: 1\r\nB-x:  two\r\n  parts\r\nC:3\n\r\nbody\r\n";
        let s = split(m).unwrap();
        assert_eq!(s.fields.len(), 3);
        assert_eq!(s.fields[0].name, "A");
        assert_eq!(s.fields[0].value(), "1");
        assert_eq!(s.fields[1].value(), "two  parts");
        assert_eq!(s.fields[2].value(), "3");
        assert_eq!(&m[s.body_offset..], b"body\r\n");
        let lf = b"A: 1\nB: 2\n\nbody";
        let s = split(lf).unwrap();
        assert_eq!(&lf[s.body_offset..], b"body");
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(
            split(b" x\r\n").unwrap_err(),
            HeaderError::LeadingContinuation { line: 1 }
        );
        assert_eq!(
            split(b"A: 1\r\nnot a header\r\n").unwrap_err(),
            HeaderError::NotAField { line: 2 }
        );
        assert_eq!(split(b"\r\nbody").unwrap_err(), HeaderError::Empty);
        let mut big = b"A: ".to_vec();
        big.extend(std::iter::repeat_n(b'x', MAX_FIELD_LEN + 1));
        assert!(matches!(split(&big), Err(HeaderError::FieldTooLong { .. })));
        let many: Vec<u8> = (0..MAX_FIELDS + 1)
            .flat_map(|i| format!("H{i}: v\r\n").into_bytes())
            .collect();
        assert_eq!(split(&many).unwrap_err(), HeaderError::TooManyFields);
    }

    #[test]
    fn headers_without_body() {
        let s = split(b"A: 1\r\n").unwrap();
        assert_eq!(s.fields.len(), 1);
        assert_eq!(s.body_offset, 6);
    }
}
