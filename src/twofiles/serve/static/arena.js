// The arena page: POST /arena/battle (two anonymous answers), POST /arena/vote (names revealed).
"use strict";

const $ = (id) => document.getElementById(id);
let battleId = null;

function showError(msg) {
  $("error").textContent = msg || "";
}

function resetSides() {
  for (const side of ["a", "b"]) {
    $("name-" + side).textContent = "Model " + side.toUpperCase();
    $("reply-" + side).textContent = "";
    $("side-" + side).classList.remove("won");
  }
  $("votes").hidden = true;
  $("reveal").hidden = true;
}

async function battle(prompt) {
  showError("");
  resetSides();
  $("battle").disabled = true;
  $("reply-a").textContent = $("reply-b").textContent = "…";
  try {
    const body = {
      prompt,
      system: $("system").value.trim(),
      temperature: Number($("temperature").value),
      max_tokens: Math.floor(Number($("max_tokens").value)),
    };
    const res = await TF.json("POST", "/arena/battle", body);
    battleId = res.battle_id;
    $("reply-a").textContent = res.a.content || "(empty answer)";
    $("reply-b").textContent = res.b.content || "(empty answer)";
    $("votes").hidden = false;
  } catch (e) {
    $("reply-a").textContent = $("reply-b").textContent = "";
    showError(e.message);
  } finally {
    $("battle").disabled = false;
  }
}

async function vote(winner) {
  if (!battleId) return;
  showError("");
  document.querySelectorAll(".vote").forEach((b) => (b.disabled = true));
  try {
    const res = await TF.json("POST", "/arena/vote", { battle_id: battleId, winner });
    battleId = null;
    $("name-a").textContent = "Model A: " + res.model_a;
    $("name-b").textContent = "Model B: " + res.model_b;
    if (winner === "a" || winner === "b") $("side-" + winner).classList.add("won");
    const said = { a: "A is better", b: "B is better", tie: "a tie", both_bad: "both are bad" }[winner];
    $("reveal").replaceChildren(
      "Your vote: " + said + " — recorded. ",
      TF.el("a", { href: "/leaderboard" }, "See the leaderboard"),
      " or ask another prompt."
    );
    $("reveal").hidden = false;
    $("votes").hidden = true;
  } catch (e) {
    showError(e.message);
  } finally {
    document.querySelectorAll(".vote").forEach((b) => (b.disabled = false));
  }
}

$("ask").addEventListener("submit", (e) => {
  e.preventDefault();
  const prompt = $("prompt").value;
  if (prompt.trim()) battle(prompt);
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("ask").requestSubmit();
  }
});
document.querySelectorAll(".vote").forEach((b) => b.addEventListener("click", () => vote(b.dataset.winner)));
TF.initKeyField($("apikey"));
