// The leaderboard page: GET /arena/leaderboard as a table, intervals drawn to one scale.
"use strict";

const $ = (id) => document.getElementById(id);

function fmt(x) {
  return Number.isFinite(x) ? x.toFixed(0) : "–";
}

async function load() {
  $("error").textContent = "";
  try {
    const data = await TF.json("GET", "/arena/leaderboard");
    const rows = data.rows || [];
    $("summary").textContent = `${data.battles} votes, ${rows.length} models, intervals from ${data.bootstrap} bootstrap resamples`;
    // one scale for every row; null (an unbounded interval) is left out of it
    const values = rows.flatMap((r) => [r.ci_low, r.ci_high, r.bt]).filter(Number.isFinite);
    const lo = Math.min(...values);
    const hi = Math.max(...values);
    const at = (x) => (hi > lo ? (100 * (x - lo)) / (hi - lo) : 50).toFixed(1) + "%";
    const body = rows.map((r) =>
      TF.el(
        "tr",
        { class: "row", dataset: { model: r.model } },
        TF.el("td", {}, r.rank),
        TF.el("td", { class: "model" }, r.model),
        TF.el("td", { class: "num" }, fmt(r.elo)),
        TF.el("td", { class: "num" }, fmt(r.bt)),
        TF.el(
          "td",
          { title: `${fmt(r.ci_low)} – ${fmt(r.ci_high)}` },
          TF.el(
            "div",
            { class: "ci" },
            Number.isFinite(r.ci_low) && Number.isFinite(r.ci_high)
              ? TF.el("div", { class: "range", style: `left:${at(r.ci_low)};width:calc(${at(r.ci_high)} - ${at(r.ci_low)})` })
              : null,
            Number.isFinite(r.bt) ? TF.el("div", { class: "point", style: `left:${at(r.bt)}` }) : null
          ),
          TF.el("span", { class: "hint" }, `${fmt(r.ci_low)} – ${fmt(r.ci_high)}`)
        ),
        TF.el("td", { class: "num games" }, r.games)
      )
    );
    $("board").tBodies[0].replaceChildren(...body);
    if (!rows.length) $("board").tBodies[0].append(TF.el("tr", {}, TF.el("td", { colspan: 6, class: "hint" }, "No votes yet: vote in the arena.")));
  } catch (e) {
    $("error").textContent = e.message;
  }
}

$("refresh").addEventListener("click", load);
load();
