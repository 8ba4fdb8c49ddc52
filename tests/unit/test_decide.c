/* decide() tables. Each case is a script of probe rounds, one second apart
 * unless a step says otherwise; per round, one letter per cluster:
 *   W = probe OK, writable   R = probe OK, read-only   F = probe failed
 *   I = writer endpoint inactive (does not resolve)   - = no probe finished
 *   r = writer endpoint inactive, the reader endpoint answered (read-only)
 * and optionally AWS's view per cluster: w = writer, r = reader, - = unknown,
 * s = "writer" but an hour old; f / t = From / To of a switchover in
 * progress (FailoverState), F / T = From / To of a failover (data loss
 * allowed), g / h = Aurora's own topology names it the global writer / a
 * reader (every instance that answered agreeing), e = the
 * global writer endpoint resolves to it; and
 * optionally each cluster's timeline as a digit (0 = unknown). After each round the expected writer (letter
 * or '-'), generation, split-brain flag and a reason substring are checked.
 * CL() steps also give each cluster's CloudWatch replication lag: a digit =
 * that many hundred ms, measured a minute ago; s = 100 ms, but measured an
 * hour ago (stale); - = none (a primary, no AWS signals).
 */
#include <stdio.h>
#include <string.h>

#include "decide.h"
#include "unit.h"

struct step {
    const char *probes;     /* a leading '>' plus a letter: the operator requests that cluster */
    const char *aws;        /* NULL: all unknown */
    char writer;            /* 'A'.. or '-' */
    int generation;         /* -1: don't check */
    const char *reason;     /* substring, NULL: don't check */
    int split;              /* -1: don't check */
    unsigned advance_ms;    /* 0: 1000 */
    char candidate;         /* disc_candidate(): 'A'.. or '-'; 0: don't check */
    const char *timelines;  /* NULL: all unknown */
    const char *lags;       /* NULL: none known */
};

struct tcase {
    const char *name;
    struct step steps[12];
};

#define S(p, a, w, g, r, sb) {p, a, w, g, r, sb, 0, 0, NULL, NULL}
#define C(p, w, cand) {p, NULL, w, -1, NULL, -1, 0, cand, NULL, NULL}    /* checks the candidate */
#define T(p, a, tl, w, g, r, sb) {p, a, w, g, r, sb, 0, 0, tl, NULL}
#define CA(p, a, w, cand) {p, a, w, -1, NULL, -1, 0, cand, NULL, NULL}
#define CL(p, lags, w, cand) {p, NULL, w, -1, NULL, -1, 0, cand, NULL, lags}
#define END {NULL, NULL, 0, 0, NULL, 0, 0, 0, NULL, NULL}

static const struct tcase cases[] = {
    {"first round picks the only writable", {S("WR", NULL, 'A', 1, "A is the only writable cluster", 0), END}},
    {"nothing finished yet", {S("--", NULL, '-', 0, "no probe has succeeded yet", 0), END}},
    {"all read-only holds", {S("RR", NULL, '-', 0, "no writable cluster", 0), END}},
    {"one failed probe keeps a healthy writer",
     {S("WR", NULL, 'A', 1, NULL, 0), S("FR", NULL, 'A', 1, NULL, 0), S("WR", NULL, 'A', 1, NULL, 0), END}},
    {"writer dropped after writer_down_after failures",
     {S("WR", NULL, 'A', 1, NULL, 0), S("FR", NULL, 'A', 1, NULL, 0), S("FR", NULL, 'A', 1, NULL, 0),
      S("FR", NULL, '-', 2, "A unreachable for 3 consecutive probes; no other writable cluster", 0), END}},
    {"read-only writer dropped at once, new writer same round",
     {S("WR", NULL, 'A', 1, NULL, 0), S("RW", NULL, 'B', 2, "A reports read-only; B is the only writable cluster", 0), END}},
    {"planned switchover through a no-writer gap",
     {S("WR", NULL, 'A', 1, NULL, 0), S("RR", NULL, '-', 2, "A reports read-only; no other writable cluster", 0),
      S("RW", NULL, 'B', 3, "B is the only writable cluster", 0), END}},
    {"unplanned failover waits out hysteresis when nothing proves a promotion",
     {S("WF", NULL, 'A', 1, NULL, 0), S("FW", NULL, 'A', 1, NULL, 0), S("FW", NULL, 'A', 1, NULL, 0),
      S("FW", NULL, 'B', 2, "A unreachable for 3 consecutive probes; B is the only writable cluster", 0), END}},
    {"unplanned failover: a promotion does not wait out the writer's hysteresis",
     {S("WR", NULL, 'A', 1, NULL, 0),
      S("FW", NULL, 'B', 2, "B promoted while A is not answering (1 failed probes)", 0),
      S("WW", NULL, 'B', 2, "split brain: B stays writer", 1), END}},
    {"old writer returns writable: fenced, split brain flagged",
     {S("WF", NULL, 'A', 1, NULL, 0), S("FW", NULL, 'A', 1, NULL, 0), S("FW", NULL, 'A', 1, NULL, 0),
      S("FW", NULL, 'B', 2, NULL, 0), S("WW", NULL, 'B', 2, "split brain: B stays writer", 1),
      S("WF", NULL, 'B', 2, NULL, 0), S("WF", NULL, 'B', 2, NULL, 0),
      S("WF", NULL, '-', 3, "B unreachable for 3 consecutive probes; no other writable cluster", 0), END}},
    {"fenced writer eligible again once seen read-only",
     {S("WF", NULL, 'A', 1, NULL, 0), S("FW", NULL, 'A', 1, NULL, 0), S("FW", NULL, 'A', 1, NULL, 0),
      S("FW", NULL, 'B', 2, NULL, 0), S("WF", NULL, 'B', 2, NULL, 0), S("WF", NULL, 'B', 2, NULL, 0),
      S("WF", NULL, '-', 3, NULL, 0), S("RF", NULL, '-', 3, NULL, 0),
      S("WF", NULL, 'A', 4, "A is the only writable cluster", 0), END}},
    {"split brain at start holds",
     {S("WW", NULL, '-', 0, "split brain: 2 clusters writable and AWS does not settle it; holding writes", 1), END}},
    {"split brain at start settled by AWS",
     {S("WW", "-w", 'B', 1, "AWS names B writer and a probe confirms it", 1), END}},
    {"stale AWS data is ignored", {S("WW", "-s", '-', 0, "split brain", 1), END}},
    {"probes win over AWS on writability",
     {S("RW", "w-", 'B', 1, "B is the only writable cluster", 0), END}},
    {"AWS alone never makes a writer", {S("--", "w-", '-', 0, NULL, 0), S("-R", "w-", '-', 0, NULL, 0), END}},
    {"AWS calling the writable cluster a reader does not demote it",
     {S("WR", "rw", 'A', 1, NULL, 0), S("WR", "rw", 'A', 1, NULL, 0), END}},
    {"blind discovery drops the writer when observations go stale",
     {S("WR", NULL, 'A', 1, NULL, 0), S("--", NULL, 'A', 1, NULL, 0), S("--", NULL, 'A', 1, NULL, 0),
      S("--", NULL, 'A', 1, NULL, 0), S("--", NULL, 'A', 1, NULL, 0), S("--", NULL, 'A', 1, NULL, 0),
      S("--", NULL, '-', 2, "A no successful probe for 6000 ms", 0), END}},
    {"transient failure of the only writer keeps generation",
     {S("WR", NULL, 'A', 1, NULL, 0), S("FR", NULL, 'A', 1, NULL, 0), S("WR", NULL, 'A', 1, NULL, 0),
      S("FR", NULL, 'A', 1, NULL, 0), S("WR", NULL, 'A', 1, NULL, 0), END}},
    {"writer down then back with nobody else: resumes",
     {S("WR", NULL, 'A', 1, NULL, 0), S("FR", NULL, 'A', 1, NULL, 0), S("FR", NULL, 'A', 1, NULL, 0),
      S("FR", NULL, '-', 2, NULL, 0), S("WR", NULL, 'A', 3, "A is the only writable cluster", 0), END}},
    {"A to B to A to B drill",
     {S("WR", NULL, 'A', 1, NULL, 0), S("RW", NULL, 'B', 2, NULL, 0), S("WR", NULL, 'A', 3, NULL, 0),
      S("RW", NULL, 'B', 4, NULL, 0), S("RW", NULL, 'B', 4, NULL, 0), END}},
    {"three clusters: one writer", {S("RRW", NULL, 'C', 1, "C is the only writable cluster", 0), END}},
    {"three clusters: two writable after writer loss holds",
     {S("WRR", NULL, 'A', 1, NULL, 0), S("RWW", NULL, '-', 2, "A reports read-only; split brain: 2 clusters writable", 1), END}},
    {"three clusters: AWS settles", {S("WRR", NULL, 'A', 1, NULL, 0), S("RWW", "--w", 'C', 2, "AWS names C writer", 1), END}},
    {"partition: writer unreachable, others read-only",
     {S("WRR", NULL, 'A', 1, NULL, 0), S("FRR", NULL, 'A', 1, NULL, 0), S("FRR", NULL, 'A', 1, NULL, 0),
      S("FRR", NULL, '-', 2, NULL, 0), S("FRR", NULL, '-', 2, NULL, 0), END}},
    {"promotion while the old writer still accepts writes: the promoted cluster wins",
     {S("WR", NULL, 'A', 1, NULL, 0),
      S("WW", NULL, 'B', 2, "B promoted while A still accepts writes (split brain): A fenced", 1),
      S("WW", NULL, 'B', 2, "split brain: B stays writer", 1),
      S("RW", NULL, 'B', 2, "B stays writer; split brain resolved", 0), END}},
    {"a promotion that is taken back leaves the fenced old writer held",
     {S("WR", NULL, 'A', 1, NULL, 0), S("WW", NULL, 'B', 2, NULL, 1),
      S("WR", NULL, '-', 3, "B reports read-only; no other writable cluster", 0),
      S(">AWR", NULL, 'A', 4, "switchover to A requested by the operator", 0), END}},
    {"split brain between a writer that stays writable and one never seen read-only keeps the writer",
     {S("WF", NULL, 'A', 1, NULL, 0), S("WW", NULL, 'A', 1, "split brain: A stays writer", 1),
      S("WR", NULL, 'A', 1, "A stays writer; split brain resolved", 0), END}},
    {"two promotions at once while the writer is writable: hold and fence it",
     {S("WRR", NULL, 'A', 1, NULL, 0),
      S("WWW", NULL, '-', 2, "split brain: 2 clusters promoted at once and AWS does not settle it", 1),
      S("WWR", NULL, 'B', 3, "B is the only writable cluster", 1), END}},
    {"read-only writer with everyone else failing",
     {S("WF", NULL, 'A', 1, NULL, 0), S("RF", NULL, '-', 2, "A reports read-only; no other writable cluster", 0), END}},
    {"half-finished first round picks what it saw",
     {S("-W", NULL, 'B', 1, NULL, 0), S("RW", NULL, 'B', 1, NULL, 0), END}},
    {"failures of a non-writer change nothing",
     {S("WF", NULL, 'A', 1, NULL, 0), S("WF", NULL, 'A', 1, NULL, 0), S("WF", NULL, 'A', 1, NULL, 0),
      S("WF", NULL, 'A', 1, NULL, 0), END}},
    {"new writer must be healthy now: a failing candidate is skipped",
     {S("WR", NULL, 'A', 1, NULL, 0), S("RF", NULL, '-', 2, NULL, 0), S("RW", NULL, 'B', 3, NULL, 0), END}},
    {"fenced cluster is skipped even when it is the only writable",
     {S("WF", NULL, 'A', 1, NULL, 0), S("FW", NULL, 'A', 1, NULL, 0), S("FW", NULL, 'A', 1, NULL, 0),
      S("FW", NULL, 'B', 2, NULL, 0), S("WR", NULL, '-', 3, "B reports read-only; no other writable cluster", 0), END}},
    {"candidate that went stale is not picked",
     {S("RW", NULL, 'B', 1, NULL, 0), S("R-", NULL, 'B', 1, NULL, 0), S("R-", NULL, 'B', 1, NULL, 0),
      S("R-", NULL, 'B', 1, NULL, 0), S("R-", NULL, 'B', 1, NULL, 0), S("R-", NULL, 'B', 1, NULL, 0),
      S("R-", NULL, '-', 2, "B no successful probe", 0), END}},
    {"switchover waits for the target to be writable, then fences the old writer",
     {S("WR", NULL, 'A', 1, NULL, 0), S(">BWR", NULL, 'A', 1, NULL, 0), S("WR", NULL, 'A', 1, NULL, 0),
      S("WW", NULL, 'B', 2, "switchover to B requested by the operator", 1),
      S("WW", NULL, 'B', 2, "split brain: B stays writer", 1), S("RW", NULL, 'B', 2, NULL, 0), END}},
    {"switchover to the current writer is a no-op",
     {S("WR", NULL, 'A', 1, NULL, 0), S(">AWR", NULL, 'A', 1, NULL, 0), S("RW", NULL, 'B', 2, NULL, 0), END}},
    {"AWS writer among failing candidates is not enough",
     {S("FW", "w-", 'B', 1, NULL, 0), END}},
    {"inactive secondaries cost nothing and are never picked",
     {S("WI", NULL, 'A', 1, "A is the only writable cluster", 0), S("WI", NULL, 'A', 1, NULL, 0),
      S("WI", NULL, 'A', 1, NULL, 0), S("WI", NULL, 'A', 1, NULL, 0), S("WI", NULL, 'A', 1, NULL, 0),
      S("WI", NULL, 'A', 1, NULL, 0), S("WI", NULL, 'A', 1, NULL, 0), END}},
    {"a writer whose endpoint goes inactive is dropped after writer_down_after rounds",
     {S("WR", NULL, 'A', 1, NULL, 0), S("IR", NULL, 'A', 1, NULL, 0), S("IR", NULL, 'A', 1, NULL, 0),
      S("IR", NULL, '-', 2, "A writer endpoint inactive (does not resolve) for 3 consecutive probes", 0),
      END}},
    {"promoted secondary used the round its endpoint resolves",
     {S("WI", NULL, 'A', 1, NULL, 0), S("RI", NULL, '-', 2, "A reports read-only", 0),
      S("IW", NULL, 'B', 3, "B is the only writable cluster", 0), END}},
    {"a secondary seen through its reader endpoint: promoted the round its writer endpoint answers writable",
     {S("Wr", NULL, 'A', 1, NULL, 0), S("Wr", NULL, 'A', 1, NULL, 0),
      S("WW", NULL, 'B', 2, "B promoted while A still accepts writes (split brain): A fenced", 1), END}},
    {"a writer whose endpoint goes inactive while its reader answers waits out writer_down_after",
     {S("WR", NULL, 'A', 1, NULL, 0), S("rR", NULL, 'A', 1, NULL, 0), S("rR", NULL, 'A', 1, NULL, 0),
      S("rR", NULL, '-', 2, "A writer endpoint inactive (does not resolve) for 3 consecutive probes", 0),
      END}},
    {"the reader of a fenced old primary does not release its fence",
     {S("WR", NULL, 'A', 1, NULL, 0), S("WW", NULL, 'B', 2, NULL, 1), S("rW", NULL, 'B', 2, NULL, 0),
      S("WR", NULL, '-', 3, "B reports read-only; no other writable cluster", 0), END}},
    {"an inactive writer dropped with nobody else resumes when its name returns",
     {S("WR", NULL, 'A', 1, NULL, 0), S("IR", NULL, 'A', 1, NULL, 0), S("IR", NULL, 'A', 1, NULL, 0),
      S("IR", NULL, '-', 2, NULL, 0), S("WR", NULL, 'A', 3, "A is the only writable cluster", 0), END}},
    {"candidate: an inactive secondary is nobody's candidate",
     {C("WI", 'A', '-'), C("FI", 'A', '-'), C("RI", '-', '-'), END}},
    /* timelines (PostgreSQL): a promoted standby starts a newer one */
    {"both writable at start: the newer timeline was promoted last",
     {T("WW", NULL, "12", 'B', 1, "2 clusters writable; B is on the newest timeline (2): promoted last", 1),
      END}},
    {"both writable at start on the same timeline: hold",
     {T("WW", NULL, "22", '-', 0, "split brain: 2 clusters writable", 1), END}},
    {"a writable cluster on a newer timeline than the writer was promoted from it",
     {T("WF", NULL, "10", 'A', 1, NULL, 0),
      T("WW", NULL, "12", 'B', 2, "B promoted while A still accepts writes (split brain): A fenced", 1),
      END}},
    {"A to B to A with A never seen read-only: its newer timeline releases the fence",
     {T("WR", NULL, "11", 'A', 1, NULL, 0), T("FW", NULL, "02", 'B', 2, NULL, 0),
      T("FW", NULL, "02", 'B', 2, NULL, 0), T("WF", NULL, "12", 'B', 2, NULL, 0),
      T("WF", NULL, "32", 'A', 3, "A promoted while B is not answering", 0), END}},
    {"the old writer back on its old timeline stays fenced",
     {T("WR", NULL, "11", 'A', 1, NULL, 0), T("FW", NULL, "02", 'B', 2, NULL, 0),
      T("WF", NULL, "12", 'B', 2, NULL, 0), T("WF", NULL, "12", 'B', 2, NULL, 0),
      T("WF", NULL, "12", '-', 3, "B unreachable for 3 consecutive probes; no other writable cluster", 0),
      END}},
    /* AWS: fresh DescribeGlobalClusters data */
    {"AWS naming another writable cluster writer moves the writer and fences the old one",
     {S("WW", "w-", 'A', 1, NULL, 1), S("WW", "rw", 'B', 2, "AWS names B writer and a probe confirms it; A still accepts writes: fenced", 1),
      S("WW", "rw", 'B', 2, "split brain: B stays writer", 1), END}},
    {"AWS naming a cluster the probes find read-only changes nothing",
     {S("WR", "rw", 'A', 1, NULL, 0), S("WR", "rw", 'A', 1, NULL, 0), END}},
    {"stale AWS data naming another writer changes nothing",
     {S("WF", NULL, 'A', 1, NULL, 0), S("WW", "-s", 'A', 1, "split brain: A stays writer", 1), END}},
    {"AWS releases a fence: names the fenced cluster writer with no failover in progress",
     {S("WR", NULL, 'A', 1, NULL, 0), S("WW", NULL, 'B', 2, NULL, 1), S("WR", NULL, '-', 3, NULL, 0),
      S("WR", "wr", 'A', 4, "AWS names A writer and a probe confirms it", 0), END}},
    {"switchover in progress: the From writer takes no new work until the To cluster is writable",
     {S("WR", "wr", 'A', 1, NULL, 0),
      S("WR", "ft", '-', 2, "AWS reports a switchover from A to B in progress: holding writes", 0),
      S("RR", "ft", '-', 2, NULL, 0),
      S("RW", "ft", 'B', 3, "AWS reports a switchover to B in progress and a probe finds it writable", 0),
      S("RW", "rw", 'B', 3, NULL, 0), END}},
    {"switchover in progress: the From cluster stays fenced while still writable",
     {S("WR", "wr", 'A', 1, NULL, 0), S("WW", "ft", 'B', 2, NULL, 1),
      S("WW", "ft", 'B', 2, NULL, 1), S("WW", NULL, 'B', 2, "split brain: B stays writer", 1), END}},
    {"failover with data loss: no writer until AWS names the target",
     {S("WR", "wr", 'A', 1, NULL, 0),
      S("FR", "FT", '-', 2, "AWS reports a failover from A to B in progress: holding writes until AWS names the new writer", 0),
      S("FW", "FT", '-', 2, NULL, 0), S("WW", "FT", '-', 2, NULL, 1),
      S("WW", "rw", 'B', 3, "AWS names B writer and a probe confirms it", 1), END}},
    /* Aurora's topology (aurora_global_db_instance_status, every instance agreeing) */
    {"both writable at start: the Aurora topology names the writer",
     {S("WW", "g-", 'A', 1, "the Aurora topology names A writer and a probe confirms it", 1), END}},
    {"the Aurora topology naming another writable cluster moves the writer and fences the old one",
     {S("WF", NULL, 'A', 1, NULL, 0),
      S("WW", "-g", 'B', 2, "the Aurora topology names B writer and a probe confirms it; A still accepts writes: fenced", 1),
      S("WW", "-g", 'B', 2, "split brain: B stays writer", 1), END}},
    {"the Aurora topology naming a read-only cluster changes nothing",
     {S("WR", "-g", 'A', 1, NULL, 0), S("WR", "-g", 'A', 1, NULL, 0), END}},
    {"the Aurora topology naming another writer releases the fence of an old primary seen through its reader",
     {S("WR", NULL, 'A', 1, NULL, 0), S("FW", NULL, 'B', 2, NULL, 0), S("rW", NULL, 'B', 2, NULL, 0),
      S("rW", "hg", 'B', 2, NULL, 0), S("WF", NULL, 'A', 3, "A promoted while B is not answering", 0),
      END}},
    {"the Aurora topology naming it a reader releases no fence when it did not answer",
     {S("WR", NULL, 'A', 1, NULL, 0), S("FW", NULL, 'B', 2, NULL, 0), S("FW", "hg", 'B', 2, NULL, 0),
      S("WF", NULL, 'B', 2, NULL, 0), END}},
    {"the Aurora topology releases a fence",
     {S("WR", NULL, 'A', 1, NULL, 0), S("WW", NULL, 'B', 2, NULL, 1), S("WR", NULL, '-', 3, NULL, 0),
      S("WR", "g-", 'A', 4, "the Aurora topology names A writer", 0), END}},
    /* Aurora's global writer endpoint: it confirms, never moves a writer */
    {"both writable at start: the global writer endpoint breaks the tie",
     {S("WW", "-e", 'B', 1, "2 clusters writable; the global writer endpoint points at B", 1), END}},
    {"the global writer endpoint pointing elsewhere never moves a writer",
     {S("WR", NULL, 'A', 1, NULL, 0), S("WW", "-e", 'B', 2, "B promoted", 1),
      S("WW", "e-", 'B', 2, "split brain: B stays writer", 1), END}},
    {"the global writer endpoint at a read-only cluster makes no writer",
     {S("RR", "e-", '-', 0, NULL, 0), END}},
    {"candidate: AWS's failover target",
     {CA("WRR", "wrr", 'A', '-'), CA("WRR", "frt", '-', 'C'), CA("RRW", "frt", 'C', '-'), END}},
    {"candidate: the replica while a planned switchover has no writer",
     {C("WR", 'A', '-'), C("RR", '-', 'B'), C("RW", 'B', '-'), END}},
    {"candidate: the replica while the writer is in doubt and once it is dropped",
     {C("WR", 'A', '-'), C("FR", 'A', 'B'), C("FR", 'A', 'B'), C("FR", '-', 'B'), END}},
    {"candidate: none again when the writer in doubt answers",
     {C("WR", 'A', '-'), C("FR", 'A', 'B'), C("WR", 'A', '-'), END}},
    {"candidate: none when the replica is failing too",
     {C("WR", 'A', '-'), C("RF", '-', '-'), C("RR", '-', 'B'), END}},
    {"candidate: none among several replicas",
     {C("WRR", 'A', '-'), C("RRR", '-', '-'), END}},
    {"candidate: the operator's switchover target among several",
     {C("WRR", 'A', '-'), C("RRR", '-', '-'), C(">CRRR", '-', 'C'), C("RRW", 'C', '-'), END}},
    /* AWS lag (CloudWatch) picks among several healthy replicas */
    {"candidate: the least lagged of several replicas",
     {CL("WRR", "-52", 'A', '-'), CL("FRR", "-52", 'A', 'C'), CL("FRR", "-25", 'A', 'B'), END}},
    {"candidate: the least lagged once the writer is dropped",
     {CL("WRRR", "-713", 'A', '-'), CL("RRRR", "-713", '-', 'C'), END}},
    {"candidate: lag decides only if known for every replica",
     {CL("WRR", "-5-", 'A', '-'), CL("FRR", "-5-", 'A', '-'), CL("FRR", "-55", 'A', '-'),
      CL("FRR", "-s1", '-', '-'), CL("FRR", "-21", '-', 'C'), END}},
    {"candidate: lag does not make a failing or inactive replica the candidate",
     {CL("WRR", "-91", 'A', '-'), CL("FRF", "-91", 'A', 'B'), CL("FRI", "-91", 'A', 'B'), END}},
    {"candidate: the operator's target wins over the least lagged",
     {CL("WRR", "-91", 'A', '-'), CL(">BRRR", "-91", '-', 'B'), END}},
};

static const char *const names[] = {"A", "B", "C", "D"};

static void run_case(const struct tcase *tc)
{
    struct disc_params p = {.writer_down_after = 3, .stale_after_ms = 5000, .aws_stale_after_ms = 60000,
                            .lag_stale_after_ms = 600000};
    size_t n = strlen(tc->steps[0].probes);   /* the first step never requests */
    struct disc_decision prev, next;
    disc_decision_init(&prev, n);
    uint64_t now = 1000000;
    for (int i = 0; tc->steps[i].probes; i++) {
        const struct step *st = &tc->steps[i];
        const char *probes = st->probes;
        now += st->advance_ms ? st->advance_ms : 1000;
        if (probes[0] == '>') {
            prev.requested = probes[1] - 'A';
            probes += 2;
        }
        struct disc_obs obs[DISC_MAX_CLUSTERS];
        memset(obs, 0, sizeof obs);
        for (size_t k = 0; k < n; k++) {
            char c = probes[k];
            obs[k].probe = c == '-'   ? DISC_PROBE_NONE
                           : c == 'F' ? DISC_PROBE_FAILED
                           : c == 'I' ? DISC_PROBE_INACTIVE
                                      : DISC_PROBE_OK;
            obs[k].via_reader = c == 'r';
            obs[k].writable = c == 'W';
            char a = st->aws ? st->aws[k] : '-';
            obs[k].aws = a == 'w' || a == 's' ? DISC_AWS_WRITER : a == 'r' ? DISC_AWS_READER : DISC_AWS_UNKNOWN;
            obs[k].aws_failover = a == 'f' || a == 'F'   ? DISC_AWS_FAILOVER_FROM
                                  : a == 't' || a == 'T' ? DISC_AWS_FAILOVER_TO
                                                         : DISC_AWS_NO_FAILOVER;
            obs[k].aws_data_loss = a == 'F' || a == 'T';
            obs[k].topo = a == 'g' ? DISC_AWS_WRITER : a == 'h' ? DISC_AWS_READER : DISC_AWS_UNKNOWN;
            obs[k].global_endpoint = a == 'e';
            if (a == 'g')
                obs[k].aws_at_ms = 0;
            obs[k].timeline = st->timelines ? (uint32_t)(st->timelines[k] - '0') : 0;
            obs[k].aws_at_ms = a == '-' ? 0 : a == 's' ? now - 3600 * 1000 : now - 500;
            char l = st->lags && k < strlen(st->lags) ? st->lags[k] : '-';
            obs[k].lag_ms = l == 's' ? 100.0 : (l - '0') * 100.0;
            obs[k].lag_at_ms = l == '-' ? 0 : l == 's' ? now - 3600 * 1000 : now - 60 * 1000;
        }
        disc_decide(&prev, obs, names, now, &p, &next);
        int want = st->writer == '-' ? -1 : st->writer - 'A';
        if (next.writer != want || (st->generation >= 0 && next.generation != (uint64_t)st->generation) ||
            (st->split >= 0 && next.split_brain != (bool)st->split) ||
            (st->reason && !strstr(next.reason, st->reason))) {
            fprintf(stderr, "  case \"%s\" step %d (%s): writer %c gen %llu split %d reason \"%s\"\n",
                    tc->name, i, st->probes, next.writer < 0 ? '-' : 'A' + next.writer,
                    (unsigned long long)next.generation, next.split_brain, next.reason);
            fprintf(stderr, "    want writer %c gen %d split %d reason ~ \"%s\"\n", st->writer,
                    st->generation, st->split, st->reason ? st->reason : "");
            unit_failed_asserts++;
            return;
        }
        if (st->candidate) {
            int cand = disc_candidate(&next, now, &p);
            if (cand != (st->candidate == '-' ? -1 : st->candidate - 'A')) {
                fprintf(stderr, "  case \"%s\" step %d (%s): candidate %c, want %c\n", tc->name, i,
                        st->probes, cand < 0 ? '-' : 'A' + cand, st->candidate);
                unit_failed_asserts++;
                return;
            }
        }
        ASSERT_EQ_INT(next.changed, next.writer != prev.writer);
        prev = next;
    }
}

static void test_tables(void)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run_case(&cases[i]);    /* every case runs: a change shows all it breaks */
    }
    printf("decide: %zu table cases\n", sizeof cases / sizeof cases[0]);
}

int main(void)
{
    RUN(test_tables);
    UNIT_DONE();
}
