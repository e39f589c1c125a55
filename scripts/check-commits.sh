#!/usr/bin/env bash
# scripts/check-commits.sh: the commit messages CI builds follow CONTRIBUTING.md.
#
# Usage: scripts/check-commits.sh [RANGE]     (default: every commit after the rule's start)
#
# Checks each commit's subject (`area: imperative summary`, at most 72 characters, no
# "review" as its area: say "found in review" in the body) and that a body is separated from
# it by a blank line. History before the rule (e300520 and older) is not checked. In a
# shallow clone without that commit, only the commits present are checked.
set -euo pipefail
export LC_ALL=C.UTF-8
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The last commit written before the rule; everything after it must follow it.
BEFORE_RULE=e3005209ec0a5afa75a8b55bb8ccf03a2a21c167
die() { printf 'scripts/check-commits.sh: %s\n' "$*" >&2; exit 1; }
command -v git >/dev/null || die "git not found (apt-get install git)"
# A clone made by another user (CI) is still read: git would refuse it as "dubious ownership".
git() { command git -c safe.directory='*' "$@"; }
if ! git rev-parse --git-dir >/dev/null 2>&1; then
  echo "commits: no git history here (a source tarball), nothing to check"
  exit 0
fi

if [[ $# -gt 0 ]]; then
  range=$1
elif git cat-file -e "$BEFORE_RULE^{commit}" 2>/dev/null; then
  range="$BEFORE_RULE..HEAD"
else
  range=HEAD
fi

bad=0 checked=0
while read -r commit; do
  checked=$((checked + 1))
  subject=$(git log -1 --format=%s "$commit")
  second=$(git log -1 --format=%B "$commit" | sed -n 2p)
  problem=
  if ((${#subject} > 72)); then
    problem="subject is ${#subject} characters, at most 72"
  elif [[ ! $subject =~ ^[a-z0-9][a-z0-9_./-]*(,\ ?[a-z0-9][a-z0-9_./-]*)*:\ [a-z] ]]; then
    problem="subject is not 'area: imperative summary' (lower-case area and verb)"
  elif [[ $subject =~ ^review ]]; then
    problem="'review' is not an area: name what changed, say 'found in review' in the body"
  elif [[ $subject == *. ]]; then
    problem="subject ends with a full stop"
  elif [[ -n $second ]]; then
    problem="no blank line between the subject and the body"
  fi
  if [[ -n $problem ]]; then
    printf '%s %s\n  %s\n' "${commit:0:8}" "$subject" "$problem" >&2
    bad=$((bad + 1))
  fi
done < <(git rev-list --no-merges "$range")

((bad == 0)) || die "$bad of $checked commits do not follow CONTRIBUTING.md"
echo "commits: $checked checked, all follow CONTRIBUTING.md"
