//! What a directory says about an account when it refuses a bind: the LDAP password policy response control
//! (draft-behera-ldap-password-policy-10, OpenLDAP's `ppolicy` overlay) and Active Directory's sub-codes in the
//! diagnostic message (`... data 775, v4563`).

use super::AccountProblem;

/// The password policy control's OID, sent (without a value) with every user bind.
pub const PPOLICY_OID: &str = "1.3.6.1.4.1.42.2.27.8.5.1";

/// The `error` of a password policy response control's value:
/// `SEQUENCE { warning [0] CHOICE {...} OPTIONAL, error [1] ENUMERATED OPTIONAL }`.
/// `None` when the control carries no error or cannot be read.
pub fn ppolicy_error(value: &[u8]) -> Option<AccountProblem> {
    let (tag, body, _) = tlv(value)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = body;
    while !rest.is_empty() {
        let (tag, content, next) = tlv(rest)?;
        if tag == 0x81 {
            return match content.last()? {
                0 => Some(AccountProblem::PasswordExpired),
                1 => Some(AccountProblem::Locked),
                2 => Some(AccountProblem::MustChangePassword),
                _ => None,
            };
        }
        rest = next;
    }
    None
}

/// One BER tag-length-value with a definite length: (tag, content, what follows).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n].iter().fold(0usize, |acc, x| (acc << 8) | *x as usize);
        b = &b[n..];
        len
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// Active Directory's reason for an invalid-credentials (49) bind, from the `data XXX` of its message.
/// `Some(None)` is AD's "no such user" (525): unknown here, so a chain may go on.
pub fn ad_subcode(message: &str) -> Option<Option<AccountProblem>> {
    let code = message.split("data ").nth(1)?.split([',', ' ']).next()?;
    Some(match code.to_ascii_lowercase().as_str() {
        "525" => None,
        "530" | "531" | "775" => Some(AccountProblem::Locked),
        "532" => Some(AccountProblem::PasswordExpired),
        "533" => Some(AccountProblem::Disabled),
        "701" => Some(AccountProblem::AccountExpired),
        "773" => Some(AccountProblem::MustChangePassword),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_policy_error_after_a_warning() {
        // OpenLDAP's encoding of { warning: graceAuthNsRemaining 2, error: accountLocked }.
        assert_eq!(
            ppolicy_error(&[0x30, 0x08, 0xa0, 0x03, 0x81, 0x01, 0x02, 0x81, 0x01, 0x01]),
            Some(AccountProblem::Locked)
        );
        assert_eq!(ppolicy_error(&[0x30, 0x03, 0x81, 0x01, 0x00]), Some(AccountProblem::PasswordExpired));
        assert_eq!(ppolicy_error(&[0x30, 0x00]), None);
        assert_eq!(ppolicy_error(&[0x30, 0x05, 0x81]), None, "truncated input is not a panic");
    }

    #[test]
    fn reads_active_directory_subcodes() {
        let msg = |d: &str| {
            format!("80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data {d}, v4563")
        };
        assert_eq!(ad_subcode(&msg("532")), Some(Some(AccountProblem::PasswordExpired)));
        assert_eq!(ad_subcode(&msg("533")), Some(Some(AccountProblem::Disabled)));
        assert_eq!(ad_subcode(&msg("701")), Some(Some(AccountProblem::AccountExpired)));
        assert_eq!(ad_subcode(&msg("775")), Some(Some(AccountProblem::Locked)));
        assert_eq!(ad_subcode(&msg("525")), Some(None));
        assert_eq!(ad_subcode(&msg("52e")), None, "a plain wrong password");
        assert_eq!(ad_subcode("Invalid credentials"), None);
    }
}
