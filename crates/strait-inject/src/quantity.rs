//! Kubernetes resource quantities (`resource.Quantity`), validated before they reach the
//! API server: a malformed one there rejects the whole pod, here it is only a warning.
//!
//! Grammar (from apimachinery's `quantity.go`):
//! ```text
//! quantity  ::= signedNumber suffix
//! number    ::= digits | digits "." digits | digits "." | "." digits
//! suffix    ::= binarySI | decimalSI | ("e" | "E") signedNumber
//! binarySI  ::= Ki | Mi | Gi | Ti | Pi | Ei
//! decimalSI ::= n | u | m | "" | k | M | G | T | P | E
//! ```
//! Negative quantities are valid Kubernetes syntax but never a valid resource amount, so
//! they are refused here.

/// The value of `s` (as `f64`, enough to compare requests with limits).
pub(crate) fn parse(s: &str) -> Result<f64, &'static str> {
    const NOT: &str = "not a Kubernetes quantity (e.g. 100m, 64Mi, 1.5)";
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let number_len = rest.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
    let (number, suffix) = rest.split_at(number_len);
    // At most one '.', at least one digit: "1.2.3" and "." are not numbers.
    if number.bytes().filter(|b| *b == b'.').count() > 1 || !number.bytes().any(|b| b.is_ascii_digit()) {
        return Err(NOT);
    }
    let value: f64 = number.parse().map_err(|_| NOT)?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => {
            let exp = suffix.strip_prefix(['e', 'E']).ok_or(NOT)?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(NOT);
            }
            let exp: i32 = exp.parse().map_err(|_| NOT)?;
            10f64.powi(exp)
        }
    };
    if negative && value != 0.0 {
        return Err("a negative amount");
    }
    Ok(value * multiplier)
}

/// `request > limit`, for two quantities already known to parse (false otherwise: the
/// caller reports malformed ones separately).
pub(crate) fn exceeds(request: &str, limit: &str) -> bool {
    matches!((parse(request), parse(limit)), (Ok(r), Ok(l)) if r > l)
}
