// The project dashboard's charts: agreement over rounds, position bias, k and response lengths. The numbers
// come from the page (json_script), computed by annotation.quality; nothing is fetched.
"use strict";

(() => {
  const data = document.getElementById("dashboard-data");
  if (!data || !window.Chart) return;
  const charts = JSON.parse(data.textContent);
  const BLUE = "#0b5cad", GREY = "#8c959f", GREEN = "#1a7f37";
  const base = {animation: false, responsive: true, maintainAspectRatio: false};

  function draw(id, config) {
    const canvas = document.getElementById(id);
    if (!canvas) return;
    new Chart(canvas, {...config, options: {...base, ...config.options}});
    canvas.closest("figure").dataset.rendered = "true";
  }

  draw("chart-alpha", {
    type: "line",
    data: {
      labels: charts.alpha.map(r => `Round ${r.round}`),
      datasets: [{label: "α (ordinal)", data: charts.alpha.map(r => r.alpha), borderColor: BLUE, backgroundColor: BLUE,
                  spanGaps: false, pointRadius: 4}],
    },
    options: {scales: {y: {suggestedMin: 0, suggestedMax: 1, title: {display: true, text: "α"}}}},
  });

  draw("chart-bias", {
    type: "bar",
    data: {
      labels: charts.bias.map(r => `k = ${r.k} (${r.rankings})`),
      datasets: [
        {label: "first shown ranked best", data: charts.bias.map(r => r.rate), backgroundColor: BLUE},
        {label: "chance (1/k)", data: charts.bias.map(r => r.chance), backgroundColor: GREY},
      ],
    },
    options: {scales: {y: {min: 0, suggestedMax: 1, title: {display: true, text: "share of rankings"}}}},
  });

  draw("chart-k", {
    type: "bar",
    data: {labels: charts.k.map(r => String(r.k)),
           datasets: [{label: "ranking tasks", data: charts.k.map(r => r.tasks), backgroundColor: BLUE}]},
    options: {scales: {x: {title: {display: true, text: "k"}}, y: {beginAtZero: true, ticks: {precision: 0}}}},
  });

  draw("chart-lengths", {
    type: "bar",
    data: {
      labels: charts.lengths.bins,
      datasets: [
        {label: "candidates", data: charts.lengths.candidates, backgroundColor: BLUE},
        {label: "demonstrations", data: charts.lengths.demonstrations, backgroundColor: GREEN},
      ],
    },
    options: {scales: {x: {title: {display: true, text: "characters"}}, y: {beginAtZero: true, ticks: {precision: 0}}}},
  });
})();
