"""A round's path in Debian's Chromium: adam administers project A. The start-round form offers the three
paths and writes the choice into the config; a bad path comes back as a field message and starts nothing;
the job page charts RLOO's and DPO's metrics."""
from __future__ import annotations

import json

import pytest

from annotation.models import DatasetSnapshot, Round, TrainingJob

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def config_on_page(page) -> dict:
    return json.loads(page.input_value("#round-config"))


def test_the_round_form_offers_the_paths_and_shows_a_bad_ones_field_message(login, users, project_a):
    page = login("adam")
    page.goto(f"/manage/projects/{project_a.pk}/")
    page.click("#manage summary")
    options = page.eval_on_selector_all("#round-path option", "els => els.map(e => e.value)")
    assert options == ["ppo", "rloo", "dpo"] and config_on_page(page)["path"] == "ppo"
    page.select_option("#round-path", "dpo")
    assert config_on_page(page)["path"] == "dpo"
    page.select_option("#round-preset", "tiny")         # a preset keeps the path chosen
    assert config_on_page(page)["path"] == "dpo" and config_on_page(page)["preset"] == "tiny"
    page.fill("#round-config", json.dumps({"path": "grpo"}))
    page.click("#start-round")
    page.wait_for_selector("#toast:has-text('unknown path')")
    assert "path" in page.inner_text("#toast") and "sft → dpo" in page.inner_text("#toast")
    assert not Round.objects.filter(project=project_a).exclude(status="collecting").exists()
    assert not DatasetSnapshot.objects.filter(project=project_a).exists() and page.problems == []


@pytest.mark.parametrize(("stage", "history", "captions"), [
    ("rloo", [{"step": s, "rloo/score": 0.1 * s, "rloo/reward": 0.05 * s, "rloo/kl": 0.2 * s,
               "rloo/policy_loss": -0.01 * s, "rloo/clipfrac": 0.1} for s in (1, 2, 3)],
     ["Loss", "Reward", "KL", "Policy update (clip fraction, approx. KL)"]),
    ("dpo", [{"step": s, "train/loss": 0.7 - 0.1 * s, "train/accuracy": 0.5 + 0.1 * s, "train/margin": 0.02 * s}
             for s in (1, 2, 3)] + [{"step": 3, "eval/loss": 0.6, "eval/accuracy": 0.6, "eval/margin": 0.03}],
     ["Loss", "Ranking accuracy (RM; DPO's implicit reward)", "Reward margin, better − worse (RM; DPO's implicit "
      "reward)"]),
])
def test_the_job_page_charts_rloo_and_dpo_metrics(stage, history, captions, login, users, project_a):
    job = TrainingJob.objects.create(project=project_a, stage=stage, status="succeeded", step=3, total=3,
                                     history=history, metrics=history[-1])
    page = login("adam")
    page.goto(f"/manage/jobs/{job.pk}/")
    page.wait_for_selector("#charts figure.chart >> nth=0")
    assert page.eval_on_selector_all("#charts figcaption", "els => els.map(e => e.textContent)") == captions
    labels = " ".join(page.eval_on_selector_all("#charts canvas", "els => els.map(e => e.getAttribute('aria-label'))"))
    assert all(name in labels for name in history[0] if name != "step")
    assert page.problems == []
