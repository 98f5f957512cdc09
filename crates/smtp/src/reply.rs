//! SMTP replies with RFC 3463 enhanced status codes.

use std::fmt;

use mm4::mapping::EnhancedStatus;

/// One SMTP reply: basic code, enhanced status code, text (possibly several lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `None` only for the greeting and the EHLO answer, which RFC 2034 exempts.
    pub enhanced: Option<EnhancedStatus>,
    pub lines: Vec<String>,
}

impl Reply {
    /// A single-line reply `code class.subject.detail text`.
    pub fn new(code: u16, enhanced: (u8, u16, u16), text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced: Some(EnhancedStatus::new(enhanced.0, enhanced.1, enhanced.2)),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced status code (greeting, EHLO).
    pub fn plain(code: u16, lines: Vec<String>) -> Self {
        Reply {
            code,
            enhanced: None,
            lines,
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// The first line's text.
    pub fn text(&self) -> &str {
        self.lines.first().map(String::as_str).unwrap_or("")
    }

    /// Writes the reply in wire form. Text never contains CR or LF: they would let a value
    /// that reached a reply (an address, a header) forge another reply line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let sep = if i + 1 == n { ' ' } else { '-' };
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(sep as u8);
            if let Some(e) = &self.enhanced {
                out.extend_from_slice(e.to_string().as_bytes());
                out.push(b' ');
            }
            out.extend(text.bytes().map(|b| {
                if b == b'\r' || b == b'\n' || b == 0 {
                    b' '
                } else {
                    b
                }
            }));
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            String::from_utf8_lossy(&self.to_bytes()).trim_end()
        )
    }
}

/// The replies the server gives, in one place so that codes stay consistent.
pub mod codes {
    use super::Reply;

    pub fn ok(text: impl Into<String>) -> Reply {
        Reply::new(250, (2, 0, 0), text)
    }
    pub fn sender_ok() -> Reply {
        Reply::new(250, (2, 1, 0), "Sender OK")
    }
    pub fn recipient_ok() -> Reply {
        Reply::new(250, (2, 1, 5), "Recipient OK")
    }
    pub fn start_data() -> Reply {
        Reply::new(354, (2, 0, 0), "End data with <CR><LF>.<CR><LF>")
    }
    pub fn closing() -> Reply {
        Reply::new(221, (2, 0, 0), "Bye")
    }
    pub fn vrfy() -> Reply {
        Reply::new(
            252,
            (2, 5, 2),
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }
    pub fn help() -> Reply {
        Reply::new(214, (2, 0, 0), "See RFC 5321 and 3GPP TS 23.140; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS")
    }
    pub fn tls_ready() -> Reply {
        Reply::new(220, (2, 0, 0), "Ready to start TLS")
    }
    pub fn shutting_down() -> Reply {
        Reply::new(
            421,
            (4, 3, 2),
            "Service shutting down, closing transmission channel",
        )
    }
    pub fn timeout() -> Reply {
        Reply::new(
            421,
            (4, 4, 2),
            "Timeout exceeded, closing transmission channel",
        )
    }
    pub fn too_many_connections() -> Reply {
        Reply::new(421, (4, 7, 0), "Too many connections, try again later")
    }
    pub fn too_many_errors() -> Reply {
        Reply::new(
            421,
            (4, 7, 0),
            "Too many errors, closing transmission channel",
        )
    }
    pub fn access_denied() -> Reply {
        Reply::new(
            554,
            (5, 7, 1),
            "Access denied: your address is not allowed to connect",
        )
    }
    pub fn storage_failed() -> Reply {
        Reply::new(
            451,
            (4, 3, 0),
            "Local error in processing: message not stored, try again",
        )
    }
    /// The store cannot be reached right now (asked at MAIL, before any data is sent).
    pub fn storage_unavailable() -> Reply {
        Reply::new(
            451,
            (4, 3, 0),
            "Local error in processing: storage unavailable, try again later",
        )
    }
    pub fn storage_full() -> Reply {
        Reply::new(
            452,
            (4, 3, 1),
            "Insufficient system storage, try again later",
        )
    }
    pub fn queue_full() -> Reply {
        Reply::new(451, (4, 3, 2), "Queue at capacity, try again later")
    }
    pub fn sync_error() -> Reply {
        Reply::new(
            554,
            (5, 5, 0),
            "Protocol synchronisation error: command sent before the previous reply",
        )
    }
    pub fn line_too_long() -> Reply {
        Reply::new(500, (5, 5, 2), "Command line too long")
    }
    pub fn unknown_command() -> Reply {
        Reply::new(500, (5, 5, 1), "Command unrecognized")
    }
    pub fn not_implemented() -> Reply {
        Reply::new(502, (5, 5, 1), "Command not implemented")
    }
    pub fn nul_in_command() -> Reply {
        Reply::new(501, (5, 5, 2), "NUL character in command")
    }
    pub fn syntax(text: impl Into<String>) -> Reply {
        Reply::new(501, (5, 5, 4), text)
    }
    pub fn bad_sequence(text: impl Into<String>) -> Reply {
        Reply::new(503, (5, 5, 1), text)
    }
    pub fn auth_ok() -> Reply {
        Reply::new(235, (2, 7, 0), "Authentication succeeded")
    }
    pub fn auth_needs_tls() -> Reply {
        Reply::new(
            538,
            (5, 7, 11),
            "Encryption required for requested authentication mechanism",
        )
    }
    pub fn auth_failed() -> Reply {
        Reply::new(535, (5, 7, 8), "Authentication credentials invalid")
    }
    pub fn auth_required() -> Reply {
        Reply::new(530, (5, 7, 0), "Authentication required")
    }
    pub fn auth_bad_base64() -> Reply {
        Reply::new(501, (5, 5, 2), "Invalid base64")
    }
    pub fn auth_cancelled() -> Reply {
        Reply::new(501, (5, 0, 0), "Authentication cancelled")
    }
    pub fn auth_mechanism() -> Reply {
        Reply::new(
            504,
            (5, 5, 4),
            "Unrecognized authentication type: PLAIN or LOGIN",
        )
    }
    pub fn tls_already_active() -> Reply {
        Reply::new(554, (5, 5, 1), "TLS already active")
    }
    pub fn unsupported_param(param: &str) -> Reply {
        Reply::new(555, (5, 5, 4), format!("Unsupported parameter {param}"))
    }
    pub fn non_ascii_address() -> Reply {
        Reply::new(553, (5, 6, 7), "Non-ASCII address requires SMTPUTF8")
    }
    pub fn too_many_recipients() -> Reply {
        Reply::new(452, (4, 5, 3), "Too many recipients")
    }
    pub fn message_too_big() -> Reply {
        Reply::new(
            552,
            (5, 3, 4),
            "Message size exceeds fixed maximum message size",
        )
    }
    pub fn bare_line_end() -> Reply {
        Reply::new(
            550,
            (5, 5, 2),
            "Bare CR or LF in message data: lines must end in CRLF",
        )
    }
    pub fn data_line_too_long() -> Reply {
        Reply::new(550, (5, 6, 0), "Message line longer than 998 octets")
    }
    pub fn too_many_hops() -> Reply {
        Reply::new(554, (5, 4, 0), "Too many Received headers: mail loop")
    }
    pub fn no_recipients() -> Reply {
        Reply::new(554, (5, 5, 1), "No valid recipients")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        assert_eq!(codes::sender_ok().to_bytes(), b"250 2.1.0 Sender OK\r\n");
        let multi = Reply::plain(250, vec!["host".into(), "SIZE 10".into()]);
        assert_eq!(multi.to_bytes(), b"250-host\r\n250 SIZE 10\r\n");
        // A CR/LF smuggled into reply text cannot start another reply line.
        let evil = Reply::new(550, (5, 1, 1), "<a\r\n250 ok>");
        assert_eq!(evil.to_bytes(), b"550 5.1.1 <a  250 ok>\r\n");
    }
}
