// lb's status page: redraws the tables and the chart from /status.json once a second.
// The first paint is the server's (lb/core/statusview.py); cell() writes values as it does.
(function () {
  "use strict";
  var NODE_KEYS = ["name", "version", "state", "health", "weight", "inflight", "rps", "p99_ms", "error_rate", "why_out"];
  var VERSION_KEYS = ["version", "nodes", "ready", "capacity", "share", "pinned_users", "pinned_requests"];
  var MEMBER_KEYS = ["id", "version", "applied_revision", "lease_left_s", "nodes_up", "inflight"];
  var COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"];
  // each version's line has its own dash pattern too: colour is never the only way to tell them
  // apart, and the 9th version is not the 1st's twin (8 colours x 5 patterns)
  var DASHES = ["", "8 4", "2 3", "10 3 2 3", "4 4"];
  var SVG = "http://www.w3.org/2000/svg";
  var WIDTH = 800, HEIGHT = 200, MIN_SPAN_S = 60, MAX_SPAN_S = 600;
  var styleOf = {};
  var failures = 0;

  function cell(key, value) {
    if (value === null || value === undefined) { return key === "why_out" ? "" : "\u2013"; }
    if (key === "error_rate" || key === "share") { return (value * 100).toFixed(1) + "%"; }
    return String(value);
  }

  function fill(tableId, items, keys, kind) {
    var body = document.querySelector("#" + tableId + " tbody");
    var rows = document.createDocumentFragment();
    items.forEach(function (item) {
      var tr = document.createElement("tr");
      tr.className = kind;
      tr.dataset.name = String(item[keys[0]]);
      keys.forEach(function (key, index) {
        var td = document.createElement(index === 0 ? "th" : "td");
        if (index === 0) { td.scope = "row"; }
        td.dataset.key = key;
        if (key === "state" || key === "health") { td.className = String(item[key]); }
        td.textContent = cell(key, item[key]);
        tr.appendChild(td);
      });
      rows.appendChild(tr);
    });
    body.replaceChildren(rows);
  }

  function style(version) {
    if (!(version in styleOf)) {
      var n = Object.keys(styleOf).length;
      styleOf[version] = {colour: COLOURS[n % COLOURS.length], dash: DASHES[n % DASHES.length]};
    }
    return styleOf[version];
  }

  function stroke(element, version) {
    element.setAttribute("stroke", style(version).colour);
    element.setAttribute("stroke-width", "2");
    if (style(version).dash) { element.setAttribute("stroke-dasharray", style(version).dash); }
  }

  function chart(data) {
    var svg = document.getElementById("chart");
    var legend = document.getElementById("legend");
    var top = 1;
    Object.keys(data.versions).forEach(function (v) {
      data.versions[v].forEach(function (rate) { top = Math.max(top, rate); });
    });
    // the x axis spans the history there is, from a minute up to ten
    var span = Math.min(Math.max(data.ago_s.length ? data.ago_s[0] : 0, MIN_SPAN_S), MAX_SPAN_S);
    var parts = document.createDocumentFragment();
    [["4", "14", "start", Math.round(top) + " req/s"], ["4", String(HEIGHT - 4), "start", "\u2212" + Math.round(span) + " s"],
     [String(WIDTH - 4), String(HEIGHT - 4), "end", "now"]].forEach(function (label) {
      var text = document.createElementNS(SVG, "text");
      text.setAttribute("x", label[0]);
      text.setAttribute("y", label[1]);
      text.setAttribute("text-anchor", label[2]);
      text.setAttribute("class", "scale");
      text.textContent = label[3];
      parts.appendChild(text);
    });
    var items = document.createDocumentFragment();
    Object.keys(data.versions).sort().forEach(function (version) {
      var rates = data.versions[version];
      var points = rates.map(function (rate, i) {
        var x = WIDTH - (data.ago_s[i] / span) * WIDTH;
        var y = HEIGHT - (rate / top) * (HEIGHT - 20);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      var line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", points.join(" "));
      line.setAttribute("fill", "none");
      stroke(line, version);
      line.setAttribute("data-version", version);
      var title = document.createElementNS(SVG, "title");
      title.textContent = version;
      line.appendChild(title);
      parts.appendChild(line);
      var item = document.createElement("span");
      item.className = "key";
      var swatch = document.createElementNS(SVG, "svg");       // the line's own colour and dashes
      swatch.setAttribute("class", "swatch");
      swatch.setAttribute("viewBox", "0 0 30 10");
      swatch.setAttribute("aria-hidden", "true");
      var sample = document.createElementNS(SVG, "line");
      [["x1", "0"], ["y1", "5"], ["x2", "30"], ["y2", "5"]].forEach(function (a) { sample.setAttribute(a[0], a[1]); });
      stroke(sample, version);
      swatch.appendChild(sample);
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(version + ": " + (rates.length ? rates[rates.length - 1] : 0) + " req/s now"));
      items.appendChild(item);
    });
    svg.replaceChildren(parts);
    legend.replaceChildren(items);
  }

  function moveText(move) {
    if (move.target === null) { return "No version move declared."; }
    var text = "Moving to " + move.target + ": " + move.on_target + " of " + move.nodes + " nodes on it.";
    return text + (move.in_progress ? " In progress: " + move.in_progress + "." : " Done.");
  }

  function deployText(deploy, now) {
    if (deploy === null) { return "No deploy has reported to this lb since it started."; }
    var note = deploy.note;                // checked by lb (statusview.clean_note): keys may be missing
    var text = "Deploy to " + (note.to || "?") + " (" + (note.by || "?") + "): " +
      (note.phase || "?");
    var batch = note.batch;
    if (batch) {
      text += ", batch " + (batch.index === undefined ? "?" : batch.index) + " of " +
        (batch.of === undefined ? "?" : batch.of) + (batch.canary ? " (canary)" : "") + ": " +
        (batch.nodes || []).join(" ") + (batch.more ? " and " + batch.more + " more" : "");
    }
    if (note.plan && note.plan.length) {
      text += "; plan: " + note.plan.map(function (nodes) { return nodes.join(" "); }).join(" | ") + " (" +
        (note.done || 0) + " of " + note.plan.reduce(function (sum, nodes) { return sum + nodes.length; }, 0) +
        " nodes done)";
    }
    if (note.bake_until !== undefined && note.bake_until !== null && note.bake_until > now) {
      text += ", bake ends in " + Math.round(note.bake_until - now) + " s";
    }
    var gates = note.gates && typeof note.gates === "object" ? Object.keys(note.gates) : [];
    if (gates.length) {
      text += "; gates: " + gates.map(function (name) { return name + " " + note.gates[name]; }).join(", ");
    }
    if (note.result) { text += "; result: " + note.result; }
    return text + ". Heard " + Math.round(Math.max(now - deploy.at, 0)) + " s ago.";
  }

  function draw(status) {
    document.getElementById("deploy").textContent = deployText(status.deploy, status.time);
    fill("nodes", status.nodes, NODE_KEYS, "node");
    fill("versions", status.versions, VERSION_KEYS, "version");
    document.getElementById("move").textContent = moveText(status.move);
    document.getElementById("updated").textContent = "As of " + status.time_iso + ".";
    chart(status.chart);
    if (status.fleet) {
      fill("fleet", status.fleet.members || [], MEMBER_KEYS, "member");
      document.getElementById("fleet-error").textContent = status.fleet.error ? "etcd: " + status.fleet.error :
        (status.fleet.members === null ? "Reading the fleet from etcd." : "");
    }
  }

  function tick() {
    fetch("status.json", {cache: "no-store"}).then(function (answer) {
      if (!answer.ok) { throw new Error("status.json answered " + answer.status); }
      return answer.json();
    }).then(function (status) {
      failures = 0;
      document.body.classList.remove("stale");
      try {
        draw(status);
      } catch (error) {                    // lb answered, the page could not show it: not "no answer"
        document.body.classList.add("stale");
        document.getElementById("updated").textContent = "This page could not draw lb's answer: " + error;
        console.error(error);
      }
    }, function () {
      failures += 1;                       // lb restarting: shown, and asked again
      document.body.classList.add("stale");
      document.getElementById("updated").textContent = "No answer from lb (" + failures + " tries); retrying.";
    }).finally(function () {
      setTimeout(tick, 1000);
    });
  }

  // status.actions: the form is sent by the script, its answer shown beside it
  var form = document.getElementById("actions");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var result = document.getElementById("action-result");
      fetch("status/action", {method: "POST", headers: {"Accept": "application/json"},
                              body: new URLSearchParams(new FormData(form))})
        .then(function (answer) { return answer.json(); })
        .then(function (reply) { result.textContent = reply.ok ? "Done." : "Refused: " + reply.error; })
        .catch(function (error) { result.textContent = "No answer from lb: " + error; });
    });
  }

  try {
    draw(JSON.parse(document.getElementById("first").textContent));
  } finally {
    setTimeout(tick, 1000);                // redraws come whatever the first draw did
  }
}());
