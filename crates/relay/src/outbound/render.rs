//! The bytes a peer gets: a transit forward goes exactly as received; a PDU we originated is
//! written for the peer's profile (version) and dialect, with the transaction id of its
//! recipient MMSE.

use mm4::{MessageType, Version};

use crate::directory::Peer;
use crate::records::StoredMessage;

/// What was rendered: the bytes, whether the PDU asks for a RES, its type.
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub ack: bool,
    pub message_type: MessageType,
}

pub fn render(
    body: &[u8],
    meta: &StoredMessage,
    peer: &Peer,
    tid: Option<&str>,
    version: Version,
) -> Result<Rendered, String> {
    let pdu = mm4::parse(body).map_err(|e| e.to_string())?;
    let message_type = pdu.message_type();
    if !meta.originated {
        return Ok(Rendered {
            bytes: body.to_vec(),
            ack: pdu.ack_requested(),
            message_type,
        });
    }
    let mut pdu = pdu;
    if let Some(t) = tid {
        pdu.transaction_id = t.to_string();
    }
    if !peer.cfg.ack_request {
        pdu.ack_request = None;
    }
    let profile = peer.dialect.profile(version);
    let bytes = mm4::emit(&pdu, &profile).map_err(|e| e.to_string())?;
    Ok(Rendered {
        bytes,
        ack: pdu.ack_requested(),
        message_type,
    })
}
