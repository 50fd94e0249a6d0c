//! Whether a Strait binary colours its log lines.
//!
//! Every binary logs with `tracing_subscriber::fmt()` to **standard error**. Colour
//! (ANSI escape sequences) helps a person at a terminal and is garbage everywhere
//! else: `kubectl logs`, a log collector, a file or a pipe show `ESC[2m…ESC[0m` around
//! every timestamp and level. So colour is used only when standard error — the stream
//! actually written to — is a terminal, and never when `NO_COLOR` is set to a
//! non-empty value (<https://no-color.org>).
//!
//! ```ignore
//! tracing_subscriber::fmt().with_ansi(strait_log::stderr_colour()).with_writer(std::io::stderr)
//! ```
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::io::IsTerminal;

/// Whether log lines written to standard error should carry colour codes.
pub fn stderr_colour() -> bool {
    colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref())
}

/// The rule itself: colour only on a terminal, and not when `no_color` (the value of
/// `NO_COLOR`) is present and non-empty. An empty `NO_COLOR` does not disable colour,
/// as the convention specifies.
pub fn colour(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal() {
        assert!(colour(true, None));
        assert!(!colour(false, None), "a pipe or a file gets no escape sequences");
    }

    #[test]
    fn no_color_turns_it_off_unless_empty() {
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(true, Some(OsStr::new("false"))), "any non-empty value disables colour");
        assert!(colour(true, Some(OsStr::new(""))), "an empty NO_COLOR is as if unset");
        assert!(!colour(false, Some(OsStr::new(""))));
    }
}
