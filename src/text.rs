//! What user text is matched on, and the characters the input checks treat
//! specially. Used by ingest (message text), rooms (their blocked words) and
//! auth (token names).
//!
//! Blocked words match on a *folded* form of the text, so that the usual
//! dodges of a word filter land on the same string as the rule:
//!
//! 1. compatibility decomposition (NFKD): fullwidth `ｓｐａｍ`, mathematical
//!    `𝐬𝐩𝐚𝐦`, ligatures and circled letters become plain letters, and
//!    accented letters become letter + combining mark;
//! 2. default-ignorable code points are dropped (zero-width space and joiners,
//!    soft hyphen, variation selectors, bidi marks, Hangul fillers, tags…), and
//!    so are the generic combining diacritics (U+0300–036F and the other
//!    "Combining Diacritical Marks" blocks): `s\u{200b}pam` → `spam`,
//!    `İstanbul` → `istanbul`, `café` → `cafe`, Zalgo text → its letters.
//!    Script-specific marks (kana voicing, Indic vowel signs) are kept: they
//!    tell words apart in their scripts;
//! 3. lowercase (with `ß` → `ss` and final `ς` → `σ`, as case folding does);
//! 4. the confusable skeleton of Unicode TS #39 (`unicode-security`): Cyrillic
//!    and Greek look-alikes map to Latin (`ѕраm` → the skeleton of `spam`).
//!    The skeleton also maps some ASCII (`m` → `rn`, `0` → `O`, `1` → `l`);
//!    rules and text go through the same function, so matches are kept, and
//!    a rule also catches its ASCII look-alikes (`sparn`);
//! 5. lowercase again (the skeleton's prototypes may be capitals) and NFC
//!    (Hangul syllables and kana recomposed, so a rule never matches half of
//!    a syllable).
//!
//! The folded form is only ever matched on: the stored and broadcast text is
//! what the user sent.

use std::sync::OnceLock;

use unicode_normalization::{IsNormalized, UnicodeNormalization};

/// Folds `text` for blocked-word matching (see the module documentation).
///
/// Character by character from a cache (each character of planes 0 and 1 is
/// folded once, on first sight), then NFC over the whole when a character's
/// fold could combine with its neighbour's. The result is the fold of the
/// whole text (a unit test compares them), at a table lookup per character.
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match cached(c) {
            Some(Cached::Same) => out.push(c),
            Some(Cached::Folded(f)) => out.push_str(f),
            None => out.push_str(&fold_general(c.encode_utf8(&mut [0; 4]))),
        }
    }
    if out.is_ascii() || unicode_normalization::is_nfc_quick(out.chars()) == IsNormalized::Yes {
        return out;
    }
    out.chars().nfc().collect()
}

/// The fold of one character, from the cache; `None` beyond plane 1.
fn cached(c: char) -> Option<Cached> {
    /// Planes 0 and 1: every script in use, emoji and mathematical letters.
    const CACHED: usize = 0x2_0000;
    static CACHE: OnceLock<Vec<OnceLock<Option<Box<str>>>>> = OnceLock::new();
    let cell = CACHE
        .get_or_init(|| (0..CACHED).map(|_| OnceLock::new()).collect())
        .get(c as usize)?;
    let folded = cell.get_or_init(|| {
        let f = fold_general(c.encode_utf8(&mut [0; 4]));
        let mut chars = f.chars();
        (chars.next() != Some(c) || chars.next().is_some()).then(|| f.into_boxed_str())
    });
    Some(match folded {
        None => Cached::Same,
        Some(f) => Cached::Folded(f),
    })
}

enum Cached {
    Same,
    Folded(&'static str),
}

/// The fold of a whole text in one go (the definition; [`fold`] is the same,
/// faster).
fn fold_general(text: &str) -> String {
    let pre: String = text
        .chars()
        .nfkd()
        .filter(|&c| !is_default_ignorable(c) && !is_generic_mark(c))
        .flat_map(lower)
        .collect();
    // Hangul is left out of the skeleton: it would split syllables into jamo
    // and map some of those to Latin letters (ᆼ → o).
    let mut skeleton = String::with_capacity(pre.len());
    let mut rest = pre.as_str();
    while !rest.is_empty() {
        let hangul = rest.starts_with(is_hangul);
        let end = rest
            .find(|c: char| is_hangul(c) != hangul)
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        if hangul {
            skeleton.push_str(run);
        } else {
            skeleton.extend(
                unicode_security::skeleton(run)
                    .filter(|&c| !is_default_ignorable(c) && !is_generic_mark(c))
                    .flat_map(lower),
            );
        }
        rest = tail;
    }
    skeleton.chars().nfc().collect()
}

/// Hangul syllables, jamo and compatibility jamo.
fn is_hangul(c: char) -> bool {
    matches!(
        c,
        '\u{1100}'..='\u{11ff}'
            | '\u{3130}'..='\u{318f}'
            | '\u{a960}'..='\u{a97f}'
            | '\u{ac00}'..='\u{d7ff}'
    )
}

/// Lowercase, plus the two full case foldings lowercase lacks that matter
/// for matching words.
fn lower(c: char) -> Lower {
    match c {
        'ß' | 'ẞ' => Lower::Two('s', 's'),
        'ς' => Lower::One(Some('σ')),
        c if c.is_ascii() => Lower::One(Some(c.to_ascii_lowercase())),
        c => Lower::Std(c.to_lowercase()),
    }
}

enum Lower {
    One(Option<char>),
    Two(char, char),
    Std(std::char::ToLowercase),
}

impl Iterator for Lower {
    type Item = char;
    fn next(&mut self) -> Option<char> {
        match self {
            Lower::One(c) => c.take(),
            Lower::Two(a, b) => {
                let first = *a;
                *self = Lower::One(Some(*b));
                Some(first)
            }
            Lower::Std(it) => it.next(),
        }
    }
}

/// Default_Ignorable_Code_Point (Unicode DerivedCoreProperties): invisible
/// by default, whatever the font.
pub fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{34f}'
            | '\u{61c}'
            | '\u{115f}'..='\u{1160}'
            | '\u{17b4}'..='\u{17b5}'
            | '\u{180b}'..='\u{180f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{fff0}'..='\u{fff8}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e0fff}'
    )
}

/// The generic combining diacritics (accents any Latin, Greek or Cyrillic
/// letter may carry).
fn is_generic_mark(c: char) -> bool {
    matches!(
        c,
        '\u{300}'..='\u{36f}'
            | '\u{1ab0}'..='\u{1aff}'
            | '\u{1dc0}'..='\u{1dff}'
            | '\u{20d0}'..='\u{20ff}'
            | '\u{fe20}'..='\u{fe2f}'
    )
}

/// A character that shows nothing: whitespace, a default-ignorable code
/// point (zero-width, fillers such as U+3164, U+115F, U+1160, U+FFA0), or the
/// blank braille pattern U+2800. Text made only of these is empty.
pub fn is_blank(c: char) -> bool {
    c.is_whitespace() || c == '\u{2800}' || is_default_ignorable(c)
}

/// A bidi embedding, override or isolate (LRE, RLE, PDF, LRO, RLO, LRI, RLI,
/// FSI, PDI): they reorder the text after them, up to the end of the
/// paragraph when left open, so a message could reverse what the page shows
/// around it ("Trojan Source"). The implicit marks LRM, RLM and ALM are not
/// here: they only set the direction of the characters next to them, have no
/// scope to leave open, and right-to-left writers need them beside digits and
/// Latin words.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Blocked words, folded once (from the configuration or a room's settings).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BlockedWords {
    /// Folded, non-empty.
    folded: Vec<String>,
}

impl BlockedWords {
    /// Folds `words`; a word whose fold is empty (only invisible characters)
    /// is left out, since it would match every text.
    pub fn new<'a>(words: impl IntoIterator<Item = &'a str>) -> Self {
        let mut folded: Vec<String> = words
            .into_iter()
            .map(fold)
            .filter(|w| !w.trim().is_empty())
            .collect();
        folded.sort();
        folded.dedup();
        BlockedWords { folded }
    }

    pub fn is_empty(&self) -> bool {
        self.folded.is_empty()
    }

    /// Whether the folded text `folded_text` (from [`fold`]) holds a word.
    pub fn found_in(&self, folded_text: &str) -> bool {
        self.folded.iter().any(|w| folded_text.contains(w.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> BlockedWords {
        BlockedWords::new(w.iter().copied())
    }

    #[test]
    fn dodges_fold_onto_the_rule() {
        let spam = words(&["spam"]);
        for dodge in [
            "spam",
            "SPAM",
            "buy Spam now",
            "s\u{200b}pam",
            "s\u{200c}p\u{200d}a\u{2060}m",
            "s\u{ad}pam",
            "s\u{feff}pam",
            "sp\u{fe0f}am",
            "s\u{e0041}pam",
            "ｓｐａｍ",
            "ＳＰＡＭ",
            "ѕраm",               // Cyrillic dze, er, a
            "𝐬𝐩𝐚𝐦",               // mathematical bold
            "𝓈𝓅𝒶𝓂",               // mathematical script
            "ⓢⓟⓐⓜ",               // circled
            "s\u{301}pa\u{308}m", // combining accents
            "śpäm",
            "ꜱpam", // small capital s
            "ѕρаm", // Greek rho
        ] {
            assert!(spam.found_in(&fold(dodge)), "{dodge:?} → {:?}", fold(dodge));
        }
        let istanbul = words(&["istanbul"]);
        for t in ["İstanbul", "ISTANBUL", "i̇stanbul", "İSTANBUL"] {
            assert!(istanbul.found_in(&fold(t)), "{t:?} → {:?}", fold(t));
        }
        // Rules fold too: a rule written in capitals, fullwidth or Cyrillic.
        for rule in ["SPAM", "ｓｐａｍ", "ѕраm", "İstanbul"] {
            let w = words(&[rule]);
            let text = if rule == "İstanbul" {
                "istanbul"
            } else {
                "spam"
            };
            assert!(w.found_in(&fold(text)), "{rule:?}");
        }
        assert!(words(&["strasse"]).found_in(&fold("Straße")));
        assert!(words(&["ΟΔΟΣ"]).found_in(&fold("οδος")));
    }

    #[test]
    fn ordinary_text_stays_clear() {
        let w = words(&["spam", "scam", "广告", "バカ", "바보"]);
        for t in [
            "hello world, nice stream",
            "弹幕 来了 666",
            "这个主播太强了",
            "日本語のコメントです",
            "ばか", // hiragana, not the katakana rule
            "바봉", // the last syllable differs
            "🎉🎉 gg 👍🏽",
            "👨‍👩‍👧 family",
            "Spa market",
            "s pam",
            "مرحبا",
            "Привет всем",
        ] {
            assert!(!w.found_in(&fold(t)), "{t:?} → {:?}", fold(t));
        }
        for t in ["看广告吧", "バカだ", "바보야"] {
            assert!(w.found_in(&fold(t)), "{t:?}");
        }
    }

    #[test]
    fn the_cached_fold_is_the_fold_of_the_whole() {
        for b in 0u8..128 {
            let s = char::from(b).to_string();
            assert_eq!(fold(&s), fold_general(&s), "{b}");
        }
        for t in [
            "Hello, World! 0123 mIl|",
            "か\u{3099}き\u{309a}", // kana and a separate voicing mark compose
            "한국어 ᄒ\u{1161}ᆫ",    // conjoining jamo compose
            "e\u{301}\u{323} İ ǅ ﬃ ㎏ ½ Ⅻ",
            "𝐬𝐩𝐚𝐦 ｓｐａｍ ѕраm 弹幕 👨\u{200d}👩 \u{2f800}",
            "\u{939}\u{93f}\u{928}\u{94d}\u{926}\u{940} \u{e01}\u{e33}",
        ] {
            assert_eq!(fold(t), fold_general(t), "{t:?}");
        }
    }

    #[test]
    fn empty_rules_are_left_out() {
        let w = words(&["\u{200b}", "", " ", "\u{3164}"]);
        assert!(w.is_empty());
        assert!(!w.found_in(&fold("anything")));
    }

    #[test]
    fn character_classes() {
        for c in [
            '\u{200b}', '\u{3164}', '\u{2800}', '\u{115f}', '\u{1160}', '\u{ffa0}', ' ',
            '\u{3000}', '\u{feff}',
        ] {
            assert!(is_blank(c), "{c:?}");
        }
        for c in ['a', '弹', '😀', '\u{301}'] {
            assert!(!is_blank(c), "{c:?}");
        }
        for c in ['\u{202a}', '\u{202e}', '\u{2066}', '\u{2069}'] {
            assert!(is_bidi_control(c), "{c:?}");
        }
        for c in ['\u{200e}', '\u{200f}', '\u{61c}', 'a'] {
            assert!(!is_bidi_control(c), "{c:?}");
        }
    }
}
