//! The platform mix as pure functions: how many viewers each room gets (a
//! top room with a fixed share, a Zipf tail), which size class a room falls
//! in, and the message rate of each class. `platform` turns the plan into
//! connections; these functions only count.

use anyhow::bail;

/// A room's size class: the rate it gets and the line it reports on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// At least `big_min` viewers.
    Big,
    /// At least `medium_min` viewers.
    Medium,
    /// The rest of the Zipf rooms.
    Small,
    /// Extra rooms (`--quiet-rooms`) with a few viewers and no messages.
    Quiet,
}

impl Class {
    pub const ALL: [Class; 4] = [Class::Big, Class::Medium, Class::Small, Class::Quiet];

    pub fn name(self) -> &'static str {
        match self {
            Class::Big => "big",
            Class::Medium => "medium",
            Class::Small => "small",
            Class::Quiet => "quiet",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Viewers per room, largest first, summing to `viewers`: every room gets at
/// least one; the rest is shared out by weight (largest remainder). The top
/// room's weight is `top_share` (0 = plain Zipf) and the others' follow
/// `1 / rank^s` over what is left.
pub fn zipf_viewers(
    viewers: usize,
    rooms: usize,
    s: f64,
    top_share: f64,
) -> anyhow::Result<Vec<usize>> {
    if rooms == 0 || viewers < rooms {
        bail!("--viewers ({viewers}) must be at least --rooms ({rooms}), and --rooms at least 1");
    }
    if !(0.0..1.0).contains(&top_share) || !(0.0..=10.0).contains(&s) {
        bail!("--top-share must be within [0, 1) and --zipf-s within [0, 10]");
    }
    let zipf = |rank: usize| 1.0 / (rank as f64).powf(s);
    let weights: Vec<f64> = if top_share > 0.0 && rooms > 1 {
        let tail: f64 = (2..=rooms).map(zipf).sum();
        std::iter::once(top_share)
            .chain((2..=rooms).map(|r| (1.0 - top_share) * zipf(r) / tail))
            .collect()
    } else {
        let all: f64 = (1..=rooms).map(zipf).sum();
        (1..=rooms).map(|r| zipf(r) / all).collect()
    };
    let spare = (viewers - rooms) as f64;
    let mut counts: Vec<usize> = weights.iter().map(|w| (spare * w) as usize).collect();
    let mut left = viewers - rooms - counts.iter().sum::<usize>();
    // Largest remainders first; ties to the larger room.
    let mut order: Vec<usize> = (0..rooms).collect();
    order.sort_by(|&a, &b| {
        let ra = spare * weights[a] - counts[a] as f64;
        let rb = spare * weights[b] - counts[b] as f64;
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    Ok(counts.into_iter().map(|c| c + 1).collect())
}

/// The class of a Zipf room of `viewers` viewers.
pub fn class_of(viewers: usize, big_min: usize, medium_min: usize) -> Class {
    if viewers >= big_min {
        Class::Big
    } else if viewers >= medium_min {
        Class::Medium
    } else {
        Class::Small
    }
}

/// Messages per second per room of each class (`Class::index` order).
#[derive(Clone, Copy, Debug)]
pub struct Rates(pub [f64; 4]);

impl Rates {
    pub fn per_room(&self, c: Class) -> f64 {
        self.0[c.index()]
    }
}

/// The whole plan: rooms in rank order (the Zipf rooms, then the quiet ones),
/// each with its viewers and class.
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub viewers: Vec<usize>,
    pub classes: Vec<Class>,
}

impl Plan {
    pub fn rooms_of(&self, c: Class) -> Vec<usize> {
        (0..self.classes.len())
            .filter(|&r| self.classes[r] == c)
            .collect()
    }

    pub fn viewers_of(&self, c: Class) -> usize {
        self.rooms_of(c).iter().map(|&r| self.viewers[r]).sum()
    }
}

pub struct MixSpec {
    pub viewers: usize,
    /// Class the rooms as they are with this many viewers (the same rooms
    /// at the same rates when only the viewers grow); `None`: `viewers`.
    pub classes_at: Option<usize>,
    pub rooms: usize,
    pub zipf_s: f64,
    pub top_share: f64,
    pub quiet_rooms: usize,
    pub quiet_viewers: usize,
    pub big_min: usize,
    pub medium_min: usize,
}

pub fn plan(m: &MixSpec) -> anyhow::Result<Plan> {
    if m.quiet_rooms > 0 && m.quiet_viewers == 0 {
        bail!("--quiet-viewers must be at least 1 with --quiet-rooms");
    }
    let mut viewers = zipf_viewers(m.viewers, m.rooms, m.zipf_s, m.top_share)?;
    let classed = match m.classes_at {
        Some(n) => zipf_viewers(n, m.rooms, m.zipf_s, m.top_share)?,
        None => viewers.clone(),
    };
    let mut classes: Vec<Class> = classed
        .iter()
        .map(|&v| class_of(v, m.big_min, m.medium_min))
        .collect();
    viewers.extend(std::iter::repeat_n(m.quiet_viewers, m.quiet_rooms));
    classes.extend(std::iter::repeat_n(Class::Quiet, m.quiet_rooms));
    Ok(Plan { viewers, classes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_viewers_table() {
        // (viewers, rooms, s, top_share) → counts
        let table: &[(usize, usize, f64, f64, &[usize])] = &[
            (10, 1, 1.0, 0.4, &[10]),
            (10, 10, 1.0, 0.4, &[1; 10]),
            // Plain Zipf, s = 1 over 3 ranks: 6/11, 3/11, 2/11 of the 3 spare.
            (6, 3, 1.0, 0.0, &[3, 2, 1]),
            // s = 0: even.
            (12, 4, 0.0, 0.0, &[3, 3, 3, 3]),
            // 40 % on top, the rest 1/r over ranks 2..=3 (3/5, 2/5).
            (103, 3, 1.0, 0.4, &[41, 37, 25]),
        ];
        for &(v, r, s, top, want) in table {
            let got = zipf_viewers(v, r, s, top).unwrap();
            assert_eq!(got, want, "{v} viewers, {r} rooms, s {s}, top {top}");
            assert_eq!(got.iter().sum::<usize>(), v);
        }
    }

    #[test]
    fn zipf_viewers_keep_the_top_share_and_order() {
        let got = zipf_viewers(2000, 50, 1.0, 0.4).unwrap();
        assert_eq!(got.iter().sum::<usize>(), 2000);
        assert!((780..=800).contains(&got[0]), "{}", got[0]);
        assert!(got.windows(2).all(|w| w[0] >= w[1]), "{got:?}");
        assert!(got.iter().all(|&c| c >= 1));
    }

    #[test]
    fn zipf_viewers_refuse_bad_input() {
        assert!(zipf_viewers(5, 10, 1.0, 0.4).is_err());
        assert!(zipf_viewers(5, 0, 1.0, 0.4).is_err());
        assert!(zipf_viewers(50, 10, 1.0, 1.0).is_err());
        assert!(zipf_viewers(50, 10, -1.0, 0.4).is_err());
    }

    #[test]
    fn classes_and_plan() {
        for (v, want) in [
            (100, Class::Big),
            (99, Class::Medium),
            (10, Class::Medium),
            (9, Class::Small),
        ] {
            assert_eq!(class_of(v, 100, 10), want, "{v}");
        }
        let spec = |viewers, classes_at| MixSpec {
            viewers,
            classes_at,
            rooms: 3,
            zipf_s: 1.0,
            top_share: 0.4,
            quiet_rooms: 2,
            quiet_viewers: 2,
            big_min: 40,
            medium_min: 30,
        };
        let p = plan(&spec(103, None)).unwrap();
        assert_eq!(p.viewers, vec![41, 37, 25, 2, 2]);
        use Class::*;
        assert_eq!(p.classes, vec![Big, Medium, Small, Quiet, Quiet]);
        // Three times the viewers, classed as with 103: the same classes.
        let p3 = plan(&spec(309, Some(103))).unwrap();
        assert_eq!(p3.viewers, vec![123, 111, 75, 2, 2]);
        assert_eq!(p3.classes, p.classes);
        assert_eq!(plan(&spec(309, None)).unwrap().classes[2], Big);
        assert_eq!(p.rooms_of(Quiet), vec![3, 4]);
        assert_eq!(p.viewers_of(Quiet), 4);
        assert_eq!(Rates([5.0, 1.0, 0.1, 0.0]).per_room(Medium), 1.0);
    }
}
