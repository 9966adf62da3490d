//! PEM blocks (RFC 7468): labels and DER bytes, the DER held in wiped
//! memory since a block may be a private key.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::Zeroizing;

/// One `-----BEGIN <label>-----` ... `-----END <label>-----` block.
pub(crate) struct Block {
    pub(crate) label: String,
    pub(crate) der: Zeroizing<Vec<u8>>,
}

/// Every PEM block of `pem`, in order. Text outside blocks (comments,
/// `openssl` "Bag Attributes") is ignored. `what` names the input in errors.
pub(crate) fn blocks(pem: &str, what: &str) -> Result<Vec<Block>, String> {
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let label_end = after
            .find("-----")
            .ok_or_else(|| format!("{what}: a BEGIN line is not closed by `-----`"))?;
        let label = after[..label_end].trim().to_owned();
        let body_and_end = &after[label_end + 5..];
        let end_line = format!("-----END {label}-----");
        let end = body_and_end
            .find(&end_line)
            .ok_or_else(|| format!("{what}: the `{label}` block has no `{end_line}` line"))?;
        let body = &body_and_end[..end];
        if body.contains(':') {
            return Err(format!(
                "{what}: the `{label}` block is encrypted (it has headers); decrypt it first"
            ));
        }
        let b64: Zeroizing<String> =
            Zeroizing::new(body.chars().filter(|c| !c.is_whitespace()).collect());
        let der = STANDARD
            .decode(b64.as_bytes())
            .map_err(|_| format!("{what}: the `{label}` block is not valid base64"))?;
        out.push(Block {
            label,
            der: Zeroizing::new(der),
        });
        rest = &body_and_end[end + end_line.len()..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_blocks_are_read_in_order_and_text_between_is_ignored() {
        let pem = "Bag Attributes: x\n-----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\nnote\n-----BEGIN PRIVATE KEY-----\nBAU=\n-----END PRIVATE KEY-----\n";
        let b = blocks(pem, "test").unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].label, "CERTIFICATE");
        assert_eq!(&b[0].der[..], &[1, 2, 3]);
        assert_eq!(b[1].label, "PRIVATE KEY");
        assert_eq!(&b[1].der[..], &[4, 5]);
    }

    #[test]
    fn an_unterminated_or_encrypted_block_is_an_error_naming_the_input() {
        let e = blocks("-----BEGIN CERTIFICATE-----\nAQID\n", "cert.pem")
            .err()
            .unwrap();
        assert!(
            e.contains("cert.pem") && e.contains("END CERTIFICATE"),
            "{e}"
        );
        let e = blocks(
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAQID\n-----END RSA PRIVATE KEY-----\n",
            "key.pem",
        )
        .err()
        .unwrap();
        assert!(e.contains("encrypted"), "{e}");
    }
}
