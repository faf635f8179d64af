/* Self-test of the report page, run when the page is opened with #selftest (the browser test does):
 * checks that every figure rendered, that the filter bar filters figures and table, and that sorting
 * sorts; writes the results as JSON into a pre element (id selftest-result) for `chromium --dump-dom`. */
window.__reportSelfTest = function () {
  "use strict";
  var R = window.__report;
  var out = { errors: [], plots: [], filter: null, sort: null, reloads: R.reloads, restored: R.restored };
  var runs = document.querySelector("table.runs");

  function points(div, role) {
    return (div.data || []).reduce(function (n, t) {
      return n + ((t.meta && t.meta.role === role && t.visible !== false) ? (t.x || []).length : 0);
    }, 0);
  }
  function shownRows() { return runs.querySelectorAll("tbody tr:not(.filtered)"); }
  function plotById(id) {
    return R.plots.filter(function (p) { return p.div.dataset.fig === id; })[0];
  }
  function column(name) {
    var ths = runs.querySelectorAll("thead th");
    for (var i = 0; i < ths.length; i++) if (ths[i].dataset.col === name) return i;
    return -1;
  }
  function values(index) {
    return Array.prototype.map.call(shownRows(), function (tr) { return tr.cells[index].dataset.v; })
      .filter(function (v) { return v !== ""; }).map(Number);
  }
  function monotone(v, up) {
    for (var i = 1; i < v.length; i++) if (up ? v[i] < v[i - 1] : v[i] > v[i - 1]) return false;
    return true;
  }

  R.plots.forEach(function (p) {
    out.plots.push({ id: p.div.dataset.fig, rendered: !!p.div.querySelector(".main-svg"),
      traces: (p.div.data || []).length, svg_points: p.div.querySelectorAll(".scatterlayer .point").length,
      points: points(p.div, "points") });
  });
  var box = document.querySelector('#filters fieldset[data-filter="recipe"] input');
  var pareto = plotById("fig-pareto");
  var heat = plotById("fig-drop");
  var chain = Promise.resolve();
  if (box) {
    var f = { recipe: box.value, rows_before: shownRows().length,
      pareto_before: pareto ? points(pareto.div, "points") : null,
      heat_rows_before: heat ? heat.div.data[0].y.length : null };
    chain = chain.then(function () {
      box.checked = false;
      return R.applyFilter();
    }).then(function () {
      f.rows_after = shownRows().length;
      f.pareto_after = pareto ? points(pareto.div, "points") : null;
      f.heat_rows_after = heat ? heat.div.data[0].y.length : null;
      f.pareto_front_after = pareto ? points(pareto.div, "pareto") : null;
      f.leaked = Array.prototype.filter.call(shownRows(), function (tr) {
        return tr.querySelector("td:nth-child(" + (column("recipe") + 1) + ")").textContent === f.recipe;
      }).length;
      f.shown_text = document.getElementById("shown").textContent;
      box.checked = true;
      return R.applyFilter();
    }).then(function () {
      f.rows_restored = shownRows().length;
      f.pareto_restored = pareto ? points(pareto.div, "points") : null;
      out.filter = f;
    });
  }
  chain.then(function () {
    var i = column("quant_accuracy");
    if (i < 0) return;
    var th = runs.querySelectorAll("thead th")[i];
    th.click();
    var asc = values(i);
    th.click();
    var desc = values(i);
    out.sort = { column: "quant_accuracy", n: asc.length, ascending: monotone(asc, true),
      descending: monotone(desc, false), first_desc: desc[0], last_desc: desc[desc.length - 1] };
  }).catch(function (e) {
    out.errors.push("selftest: " + String(e && (e.stack || e)));
  }).then(function () {
    out.errors = out.errors.concat(window.__reportErrors || []);
    var pre = document.createElement("pre");
    pre.id = "selftest-result";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
    document.title = "selftest done";
  });
};
