//! Grouped results: one masked vector per declared group.
//!
//! With `[output] group_by = "p.column"` and declared `groups`, the group of
//! a key is known only to the grouping party `p`. To aggregate every party's
//! features per group without any party learning another's groups:
//!
//! * every key gets a group part (see [`crate::keys::append_group`]): `p`
//!   sends each key once, tagged with its own group `g(key)`; every other
//!   party sends each key once **per declared group**, tagged with that
//!   group. Exactly one copy of a key present everywhere, `(key, g(key))`,
//!   matches; the coordinator still sees one match per key.
//! * a row's masked vector has one block per group; a row fills only the
//!   block of its own group tag. The grouping party's block also starts with
//!   an indicator (1 for its rows), whose sum is the group's count.
//!
//! The node's list builder ([`super::local`]) lays rows out this way.
//! Summing matched rows then yields per-group counts and sums in one run,
//! masked like any other sum. The layout is public (it follows from the
//! analysis), so a list's length reveals only the number of groups.
//! Without grouping the layout is the identity: one block, no indicator,
//! keys unchanged.

use crate::analysis::Analysis;

/// Where each released number lives in the masked vectors of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    groups: usize,
    grouping: Option<usize>,
    features: Vec<usize>,
    names: Vec<String>,
}

impl Layout {
    /// The layout of `analysis`.
    pub fn new(analysis: &Analysis) -> Self {
        Layout {
            groups: analysis.group_count(),
            grouping: analysis
                .grouping
                .as_ref()
                .and_then(|g| analysis.party_index(&g.party)),
            features: analysis
                .parties
                .iter()
                .map(|p| analysis.features(&p.name).len())
                .collect(),
            names: analysis.parties.iter().map(|p| p.name.clone()).collect(),
        }
    }

    /// Number of groups (1 without grouping).
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Whether the analysis groups its results.
    pub fn is_grouped(&self) -> bool {
        self.grouping.is_some()
    }

    fn block(&self, party: usize) -> usize {
        self.features[party] + usize::from(self.grouping == Some(party))
    }

    /// Masked values per row of `party`'s list.
    pub fn row_width(&self, party: usize) -> usize {
        self.block(party) * self.groups
    }

    /// Where a group's count lives: the grouping party's list and the slot
    /// of its indicator. `None` without grouping (the count is then the
    /// number of matched positions).
    pub fn count_slot(&self, group: usize) -> Option<(usize, usize)> {
        let p = self.grouping?;
        Some((p, group * self.block(p)))
    }

    /// The slot of feature `feature` (index into [`Analysis::features`]) of
    /// `party`, in `group`'s block.
    pub fn feature_slot(&self, party: usize, feature: usize, group: usize) -> usize {
        let indicator = usize::from(self.grouping == Some(party));
        group * self.block(party) + indicator + feature
    }

    /// The masked vector of a dummy row of `party`: zero, except that a DP
    /// dummy of the grouping party assigned to `group` carries its
    /// indicator (so that adding it to the matched positions adds one to
    /// that group's count, as step 7 requires).
    pub fn dummy_row(&self, party: usize, group: Option<usize>) -> Vec<u64> {
        let mut v = vec![0; self.row_width(party)];
        if let (Some(g), Some((p, slot))) = (group, group.and_then(|g| self.count_slot(g)))
            && p == party
            && g < self.groups
        {
            v[slot] = 1;
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis(grouped: bool) -> Analysis {
        let g = if grouped {
            "group_by = \"b.band\"\ngroups = [\"lo\", \"hi\"]\n"
        } else {
            ""
        };
        Analysis::parse(&format!(
            "name = \"t\"\nrecipient = \"a\"\n[parties.a]\nsql = \"s\"\n[parties.b]\nsql = \"s\"\n\
             [output]\naggregates = [\"count\", \"sum(a.x)\", \"sum(b.y)\", \"sum(b.z)\"]\n{g}"
        ))
        .unwrap()
    }

    #[test]
    fn ungrouped_layout_is_the_identity() {
        let l = Layout::new(&analysis(false));
        assert_eq!((l.row_width(0), l.row_width(1)), (1, 2));
        assert_eq!(l.count_slot(0), None);
        assert_eq!(l.feature_slot(1, 1, 0), 1);
        assert_eq!(l.dummy_row(1, Some(0)), vec![0, 0]);
    }

    #[test]
    fn grouped_rows_fill_their_block() {
        let l = Layout::new(&analysis(true));
        // b groups: block = indicator + y + z; a: block = x.
        assert_eq!((l.row_width(0), l.row_width(1)), (2, 6));
        assert_eq!(l.count_slot(1), Some((1, 3)));
        assert_eq!(l.feature_slot(1, 1, 1), 5);
        assert_eq!(l.feature_slot(0, 0, 1), 1);
        assert_eq!(l.dummy_row(1, Some(0)), vec![1, 0, 0, 0, 0, 0]);
        assert_eq!(l.dummy_row(0, Some(0)), vec![0, 0]);
        assert_eq!(l.dummy_row(1, None), vec![0; 6]);
    }
}
