"""A run's evaluation: the study's contested accuracy, the z-shuffled and fresh-demonstration reads,
the reference ceilings, the people on all pairs (core.users.people) and the latents saved for the Latent page.

``EvaluationMixin`` is part of ``core.training.trainer.Trainer``; it reads the trainer's data, model and query path.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from core.models.losses import btl_loss_from_margin, vpl_loss
from core.models.reward_models import active_units, distinct_demos
from core.training.references import reference_accuracy
from core.training.shared import DATA_FIELDS, ENCODER_FIELDS
from core.users.people import people_accuracy, reading_latents
from core.users.tastes import user_groups


class EvaluationMixin:
    """Evaluation methods of core.training.trainer.Trainer."""

    def _score(self, split, partner: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Per-pair loss and correctness (1 when r_chosen > r_rejected) over a whole split, in chunks.

        With ``partner`` (N,), also the correctness when pair i is read with the user latent of pair
        partner[i]: at evaluation z is the posterior mean, a function of the demonstrations alone, so
        every pair's latent is computed once and the borrowed one is a lookup, not a second pass.
        """
        from core.models.decoders import ConcatDecoder, LinearDecoder

        if self.cfg.method == "vpl" and type(self.model.decoder) is ConcatDecoder:
            return self._score_by_text(split, partner)
        if self.cfg.method == "vpl" and type(self.model.decoder) is LinearDecoder and self.query_encoder is None:
            return self._score_by_parts(split, partner)
        n_pairs = len(split)
        if self.cfg.method == "btl" and self.query_encoder is None and n_pairs:
            # a user-blind reward on cached features: each distinct text scored once for the whole split
            texts, rows = np.unique(np.concatenate([split.chosen, split.rejected]), return_inverse=True)
            r = self.model.reward(self._query(texts))[torch.as_tensor(rows, device=self.device)]  # (2N,)
            m = r[:n_pairs] - r[n_pairs:]
            return btl_loss_from_margin(m).cpu().numpy(), (m > 0).float().cpu().numpy(), None
        chunk = 256 if self.query_encoder is not None else 2048  # texts through a transformer vs cached rows
        chunks = [np.arange(s, min(s + chunk, n_pairs)) for s in range(0, n_pairs, chunk)]
        if self.cfg.method == "vpl":
            lat = [self._posterior(split.take(idx)) for idx in chunks]
            mu = torch.cat([m for m, _ in lat]) if lat else None  # (N, L)
            logvar = torch.cat([v for _, v in lat]) if lat else None
        losses, correct, shuffled = [], [], []
        for idx in chunks:
            t = torch.as_tensor(idx, device=self.device)
            latent = (mu[t], logvar[t]) if self.cfg.method == "vpl" else None
            loss, margin, _, _ = self.forward(split, idx, train=False, latent=latent)
            losses.append(loss.cpu())
            correct.append((margin > 0).float().cpu())
            if partner is not None and self.cfg.method == "vpl":
                s = split.take(idx)
                q = self._query(np.concatenate([s.chosen, s.rejected]))  # (2B, D)
                z = mu[torch.as_tensor(partner[idx], device=self.device)]  # (B, L) another user's latent
                r = self.model.reward(q, torch.cat([z, z]), z_emb=self._z_rows(np.concatenate([s.chosen, s.rejected])))
                shuffled.append((r[: len(idx)] > r[len(idx):]).float().cpu())
        loss = torch.cat(losses).numpy() if losses else np.zeros(0)
        corr = torch.cat(correct).numpy() if correct else np.zeros(0)
        shuf = torch.cat(shuffled).numpy() if shuffled else None
        return loss, corr, shuf

    def _score_by_parts(self, split, partner: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """_score for the linear decoder on cached features (personal): a reward is base(e) + <U e, V z>, so
        each distinct response text's base and U e are computed once for the whole split, and each distinct
        demonstration once for the reader; every pair, read with its own latent or a borrowed one, is then a
        lookup. With many users a test question's answers are in every user's pairs, so this is far less work
        (the same numbers, summed in another order)."""
        n = len(split)
        if n == 0:
            return np.zeros(0), np.zeros(0), None
        model, dev = self.model, self.device
        uc, ur, inv = distinct_demos(split.ctx_chosen, split.ctx_rejected)  # (U,) x 2, (N, K)
        E = self.embeddings
        terms = model.demo_terms(E[torch.as_tensor(uc, device=dev)], E[torch.as_tensor(ur, device=dev)])
        mu, logvar = model.posterior_from_terms(terms, torch.as_tensor(inv, device=dev))  # (N, L)
        texts, rows = np.unique(np.concatenate([split.chosen, split.rejected]), return_inverse=True)
        parts = model.text_parts(self._query(texts))  # base (T,), U e (T, H)
        rows = torch.as_tensor(rows, device=dev)
        m = model.margin_from_parts(parts, rows[:n], rows[n:], mu)
        loss = vpl_loss(m, mu, logvar, beta=self.cfg.beta)  # evaluation: no population or vertex term
        shuf = None
        if partner is not None:
            z = mu[torch.as_tensor(partner, device=dev)]  # (N, L) each pair read with another user's latent
            shuf = (model.margin_from_parts(parts, rows[:n], rows[n:], z) > 0).float().cpu().numpy()
        return loss.cpu().numpy(), (m > 0).float().cpu().numpy(), shuf

    def _score_by_text(self, split, partner: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """_score for the study's concat decoder MLP([e, z]): its first layer's e part is computed once per
        distinct response text and shared by the pair read with its own latent and with a borrowed one
        (the same numbers, a third of the decoder's work at evaluation)."""
        n = len(split)
        if n == 0:
            return np.zeros(0), np.zeros(0), None
        lat = [self._posterior(split.take(np.arange(s, min(s + 2048, n)))) for s in range(0, n, 2048)]
        mu, logvar = torch.cat([m for m, _ in lat]), torch.cat([v for _, v in lat])  # (N, L)
        texts, rows = np.unique(np.concatenate([split.chosen, split.rejected]), return_inverse=True)
        dec = self.model.decoder
        he = dec.text_part(self.model.query_head(self._query(texts)))  # (T, H)
        he = F.embedding(torch.as_tensor(rows, device=he.device), he)  # (2N, H): chosen then rejected

        def margin(z):  # (N, L) -> r_chosen - r_rejected (N,)
            r = dec.from_text_part(he, torch.cat([z, z]))
            return r[:n] - r[n:]

        m = margin(mu)
        loss = vpl_loss(m, mu, logvar, beta=self.cfg.beta)  # evaluation: no population or vertex term
        shuf = None
        if partner is not None:
            shuf = (margin(mu[torch.as_tensor(partner, device=mu.device)]) > 0).float().cpu().numpy()
        return loss.cpu().numpy(), (m > 0).float().cpu().numpy(), shuf

    def references(self) -> dict:
        """Reference ceilings (global / group / per-user probe) on this run's own test pairs."""
        groups = user_groups(self.cfg.users, self.W)
        return self.shared.get("references", self.cfg, DATA_FIELDS + ENCODER_FIELDS, lambda: reference_accuracy(
            self.data, self.table.ratings, self.W, groups, self.embeddings.float().cpu().numpy()))

    @torch.no_grad()
    def evaluate(self, final: bool = False) -> dict:
        """One evaluation record; ``final``: the run's last (people scored whatever the step)."""
        self._q_cache = {}
        try:
            return self._evaluate(final)
        finally:
            self._q_cache = None

    def _evaluate(self, final: bool = False) -> dict:
        self.model.eval()
        if self.query_encoder is not None:
            self.query_encoder.model.eval()
        test = self.data.test
        loss, corr, shuf = self._score(test, self.shuffled_partner)
        user_acc, user_loss = {}, {}
        for u in range(self.data.n_users):
            m = test.user == u
            if m.any():
                user_acc[str(u)] = float(corr[m].mean())
                user_loss[str(u)] = float(loss[m].mean())
        record = {
            "step": self.step,
            "epoch": self.samples_seen / max(1, len(self.data.train)),
            "loss": self.loss_sum / self.loss_n if self.loss_n else None,
            "eval_loss": float(loss.mean()) if len(loss) else None,
            "accuracy": float(np.mean(list(user_acc.values()))) if user_acc else None,
            "pair_accuracy": float(corr.mean()) if len(corr) else None,
            "user_accuracy": user_acc,
            "user_loss": user_loss,
            "lr": self.scheduler.get_last_lr()[0],
            "phase": self.sampler.phase(max(0, self.step - 1)),
            "samples": self.samples_seen,
        }
        if self.data.val is not None:  # held-out training questions: what early stopping reads
            val = self.data.val
            vloss, vcorr, _ = self._score(val)
            record["val_loss"] = float(vloss.mean())
            record["val_accuracy"] = float(np.mean([vcorr[val.user == u].mean() for u in np.unique(val.user)]))
        if shuf is not None:
            # the same pairs, each read with another user's demonstrations: near `accuracy` = z is ignored
            per = [float(shuf[test.user == u].mean()) for u in range(self.data.n_users) if (test.user == u).any()]
            record["z_shuffled_accuracy"] = float(np.mean(per))
        if self.cfg.method == "vpl" and self.data.test_fresh is not None:
            # the same pairs read with demonstrations from outside the user's training pool: far below
            # `accuracy` = the model recognises which pairs make up a user's pool instead of reading taste
            fresh = self.data.test_fresh
            _, corr_f, _ = self._score(fresh)
            per_f = {str(u): float(corr_f[fresh.user == u].mean()) for u in range(self.data.n_users)
                     if (fresh.user == u).any()}
            record["fresh_demos_accuracy"] = float(np.mean(list(per_f.values())))
            record["fresh_demos_user_accuracy"] = per_f
        if self.step == 0:
            record["reference_accuracy"] = self.references()
        every = self.cfg.people_every
        if self.people and self.step > 0 and (final or self.step >= self.cfg.steps or (every and self.step % every == 0)):
            record.update(self.score_people())
        if self.cfg.method == "vpl" and len(self.probe):
            s = test.take(self.probe)
            mu, _ = self._posterior(s)
            record["active_units"] = active_units(mu)
            np.savez(self.run.latents_dir / f"step-{self.step:06d}.npz", mu=mu.float().cpu().numpy(),
                     user=s.user, question=s.question)
        self.loss_sum, self.loss_n = 0.0, 0
        self.model.train()
        if self.query_encoder is not None:
            self.query_encoder.model.train()
        return record

    @torch.no_grad()
    def score_people(self) -> dict:
        """all_pairs_* for the run's users and new_users_* for people outside training (core.users.people);
        the readings' latents go to latents/people-{trained,outside}-step-N.npz for the Latent page."""
        trained, outside = self.people
        out: dict = {}
        for name, pset in (("trained", trained), ("outside", outside)):
            lat = reading_latents(self.model, pset, self._frozen_rows)
            z_embed = self._frozen_rows if self._z_rows(pset.text_ids[:1]) is not None else None
            acc = people_accuracy(self.model, pset, self._frozen_rows, self._query_chunked, latents=lat, z_embed=z_embed)
            if name == "trained":
                per = {str(u): float(a) for u, a in enumerate(acc) if np.isfinite(a)}
                out["all_pairs_user_accuracy"] = per
                out["all_pairs_accuracy"] = float(np.mean(list(per.values()))) if per else None
            else:
                out["new_users"] = [{**p.to_json(), "accuracy": None if not np.isfinite(a) else float(a)}
                                    for p, a in zip(pset.people, acc, strict=True)]
                ok = acc[np.isfinite(acc)]
                out["new_users_accuracy"] = float(ok.mean()) if len(ok) else None
            if lat is not None:
                R = pset.n_readings
                np.savez(self.run.latents_dir / f"people-{name}-step-{self.step:06d}.npz",
                         mu=lat[0].float().cpu().numpy(), person=np.repeat(np.arange(len(pset.people)), R),
                         weights=np.stack([p.weights for p in pset.people]),
                         names=np.array([p.name for p in pset.people]), kinds=np.array([p.kind for p in pset.people]),
                         accuracy=acc)
        return out
