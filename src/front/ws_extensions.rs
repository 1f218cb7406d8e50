//! `Sec-WebSocket-Extensions`: accepting a client's permessage-deflate
//! offer (RFC 7692 §7) on the terms the server can keep.
//!
//! The server compresses each frame once for every viewer, so it never
//! takes context over (`server_no_context_takeover`), and asks the client
//! not to either (`client_no_context_takeover`): a client message is then
//! inflated from an empty window, and no connection keeps an inflater.
//! Its deflater always uses a 32 KiB window: an offer that limits it
//! (`server_max_window_bits` below 15) is declined, as is one with a
//! parameter it does not know or a value out of the grammar.

/// The answer to an accepted offer.
pub const ACCEPT: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// The answer to an accepted offer that named `server_max_window_bits=15`
/// (§7.1.2.1: the server must then answer with the parameter).
pub const ACCEPT_WINDOW_15: &str = "permessage-deflate; server_no_context_takeover; \
     client_no_context_takeover; server_max_window_bits=15";

/// The `Sec-WebSocket-Extensions` answer for the header values `offers`
/// (each a comma-separated list of offers, in the client's preference);
/// `None`: no permessage-deflate offer the server can accept.
pub fn accept_permessage_deflate<'a>(
    offers: impl IntoIterator<Item = &'a str>,
) -> Option<&'static str> {
    offers
        .into_iter()
        .flat_map(|value| value.split(','))
        .find_map(accept_offer)
}

/// One offer: `permessage-deflate; param[=value]; …`.
fn accept_offer(offer: &str) -> Option<&'static str> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut window_15 = false;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        let name = match name.as_str() {
            "server_no_context_takeover" if value.is_none() => "snct",
            "client_no_context_takeover" if value.is_none() => "cnct",
            "server_max_window_bits" => {
                // Only the window the deflater uses (15) can be promised.
                if window_bits(value?)? != 15 {
                    return None;
                }
                window_15 = true;
                "smwb"
            }
            "client_max_window_bits" => {
                // The client may limit its own window: any window inflates.
                if let Some(v) = value {
                    window_bits(v)?;
                }
                "cmwb"
            }
            _ => return None,
        };
        if seen.contains(&name) {
            return None; // §7: a parameter given twice declines the offer
        }
        seen.push(name);
    }
    Some(if window_15 { ACCEPT_WINDOW_15 } else { ACCEPT })
}

/// A quoted-string's content (§7.1: values may be quoted), or a token.
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(v),
    }
}

/// A window-bits value: 8 to 15, digits only, no leading zero.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u8 = v.parse().ok()?;
    (8..=15).contains(&n).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(offer: &str) -> Option<&'static str> {
        accept_permessage_deflate([offer])
    }

    #[test]
    fn browsers_and_plain_offers_are_accepted() {
        assert_eq!(
            answer("permessage-deflate; client_max_window_bits"),
            Some(ACCEPT)
        );
        assert_eq!(answer("permessage-deflate"), Some(ACCEPT));
        assert_eq!(
            answer("Permessage-Deflate ;Client_Max_Window_Bits=10"),
            Some(ACCEPT)
        );
        assert_eq!(
            answer("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            Some(ACCEPT)
        );
        assert_eq!(
            answer("permessage-deflate; server_max_window_bits=\"15\""),
            Some(ACCEPT_WINDOW_15)
        );
    }

    #[test]
    fn offers_the_server_cannot_keep_are_declined() {
        assert_eq!(
            answer("permessage-deflate; server_max_window_bits=10"),
            None
        );
        assert_eq!(answer("permessage-deflate; server_max_window_bits"), None);
        assert_eq!(
            answer("permessage-deflate; client_max_window_bits=16"),
            None
        );
        assert_eq!(
            answer("permessage-deflate; client_max_window_bits=09"),
            None
        );
        assert_eq!(answer("permessage-deflate; x_unknown"), None);
        assert_eq!(
            answer("permessage-deflate; server_no_context_takeover=1"),
            None
        );
        assert_eq!(
            answer("permessage-deflate; client_max_window_bits; client_max_window_bits"),
            None
        );
        assert_eq!(answer("x-webkit-deflate-frame"), None);
        assert_eq!(answer(""), None);
    }

    #[test]
    fn the_first_acceptable_offer_of_every_header_wins() {
        let values = [
            "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=9",
            "permessage-deflate; server_max_window_bits=15, permessage-deflate",
        ];
        assert_eq!(accept_permessage_deflate(values), Some(ACCEPT_WINDOW_15));
    }
}
