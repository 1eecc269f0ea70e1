"""The report's languages: every string it writes, in English and Japanese, and numbers, units and dates
formatted per locale with Babel.

``MESSAGES`` holds each message once with both languages side by side (a test checks that every message
has every language and the same ``{placeholders}``).  ``Locale(lang)`` formats: ``t(key, **values)`` for a
message, ``num``/``signed``/``pct``/``mb``/``ms``/``ratio``/``p_value``/``date`` for figures.  Text that the
stage records carry (warnings, pitfalls, provenance notes) is written by the stages in English and is
shown as recorded, marked ``lang="en"``; the Japanese report says so once.
"""
from __future__ import annotations

import datetime as dt
import math
import string
from typing import Any

LANGUAGES = ("en", "ja")
BABEL_LOCALES = {"en": "en_US", "ja": "ja_JP"}
REPORT_FILES = {"en": "report.html", "ja": "report.ja.html"}
LANGUAGE_NAMES = {"en": "English", "ja": "日本語"}
MINUS = "\u2212"


def check_lang(lang: str) -> str:
    """``lang`` if the report is written in it, else a ``ValueError`` naming the languages."""
    if lang not in LANGUAGES:
        raise ValueError(f"lang={lang!r}: the report is written in {list(LANGUAGES)}")
    return lang


class Locale:
    """Numbers, units and messages in one language (``en`` or ``ja``)."""

    def __init__(self, lang: str) -> None:
        self.lang = check_lang(lang)
        self.babel = BABEL_LOCALES[lang]

    # ---- messages
    def t(self, key: str, **values: Any) -> str:
        """The message ``key`` in this language with ``values`` filled in (a ``KeyError`` names a missing key)."""
        try:
            text = MESSAGES[key][self.lang]
        except KeyError:
            raise KeyError(f"no report message {key!r} in {self.lang!r}") from None
        return text.format(**values) if values else text

    def stage(self, name: str) -> str:
        """A stage's name as the reader knows it (``quantization`` -> 量子化・圧縮)."""
        key = f"stage.{name}"
        return self.t(key) if key in MESSAGES else name

    # ---- figures (``None`` is "—": not measured)
    def num(self, value: float | None, digits: int = 2) -> str:
        from babel.numbers import format_decimal

        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "—"
        pattern = "#,##0" + ("." + "0" * digits if digits > 0 else "")
        return format_decimal(value + 0.0, format=pattern, locale=self.babel)

    def signed(self, value: float | None, digits: int = 2) -> str:
        """``+0.40`` / ``−0.40`` (a true minus sign) / ``0.00``."""
        if value is None:
            return "—"
        rounded = round(value, digits)
        if rounded == 0:
            return self.num(0.0, digits)
        return ("+" if rounded > 0 else MINUS) + self.num(abs(value), digits)

    def interval(self, low: float | None, high: float | None, digits: int = 2, signed: bool = False) -> str:
        if low is None or high is None:
            return ""
        fmt = self.signed if signed else self.num
        return f"[{fmt(low, digits)}, {fmt(high, digits)}]"

    def pct(self, value: float | None, digits: int = 2) -> str:
        return "—" if value is None else f"{self.num(value, digits)}%"

    def mb(self, value: float | None, digits: int = 3) -> str:
        return "—" if value is None else f"{self.num(value, digits)} MB"

    def ms(self, value: float | None, digits: int = 3) -> str:
        return "—" if value is None else f"{self.num(value, digits)} ms"

    def ratio(self, value: float | None, digits: int = 1) -> str:
        return "—" if value is None else f"{self.num(value, digits)}×"

    def p_value(self, p: float | None) -> str:
        """McNemar's p: ``p = 0.20``; ``p = 3.1e-05``; ``p < 1e-300`` when the exact value is below float precision."""
        if p is None:
            return "—"
        if p <= 0.0:
            return "p < 1e-300"
        if p < 1e-3:
            mantissa, exponent = f"{p:.1e}".split("e")
            return f"p = {mantissa}e{int(exponent)}"
        return f"p = {self.num(p, 3 if p < 0.01 else 2)}"

    def date(self, when: dt.datetime | dt.date) -> str:
        from babel.dates import format_date

        return format_date(when, format="long", locale=self.babel)

    def join(self, items: list[str]) -> str:
        """A list in running text: ``a, b and c`` / ``a、b、c``."""
        items = [str(i) for i in items if i]
        if self.lang == "ja":
            return "、".join(items)
        if len(items) <= 2:
            return " and ".join(items)
        return ", ".join(items[:-1]) + " and " + items[-1]


def placeholders(text: str) -> set[str]:
    """The ``{names}`` a message fills in."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


# Every string the report writes.  Japanese: written for a Japanese engineering client, with the terms Japanese
# engineers use (量子化, 蒸留, パレタイズ, 枝刈り, Neural Engine, パッケージ, デプロイメントターゲット).
MESSAGES: dict[str, dict[str, str]] = {
    # ---- page furniture
    "title": {"en": "Core ML optimization report", "ja": "Core ML 最適化レポート"},
    "subtitle": {"en": "{model} on {dataset}", "ja": "{dataset} で学習した {model}"},
    "lang_switch": {"en": "日本語版", "ja": "English version"},
    "index_link": {"en": "All reports", "ja": "レポート一覧"},
    "toc": {"en": "Contents", "ja": "目次"},
    "scroll_hint": {"en": "Scroll sideways to see every column →", "ja": "横にスクロールするとすべての列が見られます →"},
    "generated": {"en": "Generated by the Core ML optimization playbook {version} from the stage records in {folder}.",
                  "ja": "Core ML 最適化プレイブック {version} が {folder} のステージ記録から生成しました。"},
    "recorded_in_english": {
        "en": "",
        "ja": "（英語の文は各ステージが記録した原文をそのまま表示しています）"},

    # ---- cover
    "cover.client": {"en": "Client", "ja": "依頼元"},
    "cover.model": {"en": "Model", "ja": "モデル"},
    "cover.dataset": {"en": "Dataset", "ja": "データセット"},
    "cover.date": {"en": "Report date", "ja": "作成日"},
    "cover.version": {"en": "Playbook version", "ja": "プレイブックのバージョン"},
    "cover.run": {"en": "Run", "ja": "実行モード"},
    "cover.run_full": {"en": "full run", "ja": "本番実行"},
    "cover.run_smoke": {"en": "smoke run (tiny data, 1 epoch): figures mean nothing",
                        "ja": "スモーク実行（小規模データ・1 エポック）：数値に意味はありません"},
    "cover.no_client": {"en": "not named (set the report's client parameter)",
                        "ja": "未指定（レポートの client パラメータで指定できます）"},
    "cover.dataset_detail": {"en": "{name}: {classes} classes, {train} training and {test} test images",
                             "ja": "{name}：{classes} クラス、学習画像 {train} 枚・テスト画像 {test} 枚"},
    "cover.model_detail": {"en": "{model}, {params} parameters", "ja": "{model}（パラメータ数 {params}）"},

    # ---- alerts
    "alert.smoke.title": {"en": "Smoke run: these figures mean nothing about the model",
                          "ja": "スモーク実行：この数値はモデルの性能を表しません"},
    "alert.smoke.text": {
        "en": "This report was made with smoke=True ({train} training images, {epochs} epoch(s), {test} test images, "
              "{repeats} timed runs per variant). It checks that the pipeline works from end to end: do not compare, "
              "ship or quote any figure in it. Run without --smoke for a real report.",
        "ja": "smoke=True で作成したレポートです（学習画像 {train} 枚、{epochs} エポック、テスト画像 {test} 枚、"
              "計測は各バリアント {repeats} 回）。パイプラインが最後まで動くことを確かめるためのものです。"
              "ここにある数値を比較・出荷判断・引用に使わないでください。実際の評価は --smoke を付けずに実行してください。"},
    "alert.warn.title": {"en": "The baseline carries a warning: the recommendation is provisional",
                         "ja": "ベースラインに警告があります：推奨は暫定です"},
    "alert.warn.text": {
        "en": "Every variant is made from this baseline, so what limits it limits all of them. Fix the cause below "
              "(train longer, check the data) and run again before acting on this report.",
        "ja": "すべてのバリアントはこのベースラインから作られているため、ベースラインの問題はすべてに及びます。"
              "下記の原因（学習不足、データの問題など）を解消して再実行するまで、このレポートに基づく判断は控えてください。"},
    "alert.chance": {
        "en": "The FP32 reference reaches {top1} top-1, near chance ({chance} for {classes} classes): the model has "
              "barely learned anything.",
        "ja": "FP32 基準の top-1 は {top1} で、当て推量（{classes} クラスで {chance}）とほとんど変わりません。"
              "モデルはほぼ何も学習できていません。"},
    "alert.improving": {
        "en": "Validation top-1 was still rising when training stopped ({before} → {after} over the last epoch): "
              "more training would probably give a better baseline.",
        "ja": "学習終了時点でも検証 top-1 は上昇を続けていました（最後のエポックで {before} → {after}）。"
              "さらに学習すればベースラインは改善する見込みです。"},
    "alert.nofit.title": {"en": "No variant meets your budget", "ja": "予算を満たすバリアントはありません"},

    # ---- sections
    "sec.summary": {"en": "Summary", "ja": "概要"},
    "sec.recommendation": {"en": "Why this variant", "ja": "推奨の根拠"},
    "sec.charts": {"en": "Accuracy against size and latency", "ja": "精度とサイズ・レイテンシ"},
    "sec.variants": {"en": "Every variant on the five axes", "ja": "全バリアントの 5 項目の測定値"},
    "sec.per_class": {"en": "Accuracy per class", "ja": "クラス別の精度"},
    "sec.deliverables": {"en": "Deliverables for the iOS engineer", "ja": "iOS エンジニア向けの成果物"},
    "sec.next": {"en": "Next steps for this model", "ja": "このモデルの次のステップ"},
    "sec.risks": {"en": "Risks and limitations", "ja": "リスクと制約"},
    "sec.pitfalls": {"en": "Pitfalls met on this model", "ja": "このモデルで見つかった注意点"},
    "sec.methodology": {"en": "How the figures were measured", "ja": "測定方法"},
    "sec.glossary": {"en": "Glossary", "ja": "用語集"},
    "sec.sources": {"en": "Sources", "ja": "出典"},

    # ---- summary
    "sum.ship": {"en": "Recommended: {name}", "ja": "推奨：{name}"},
    "sum.provisional": {"en": "Provisional choice: {name}", "ja": "暫定の候補：{name}"},
    "sum.closest": {"en": "No variant meets your budget. Closest: {name}",
                    "ja": "予算を満たすバリアントはありません。最も近いもの：{name}"},
    "sum.nothing": {"en": "Nothing to recommend: no variant was measured.",
                    "ja": "推奨できるものはありません：測定されたバリアントがありません。"},
    "sum.what": {"en": "{description} ({stage} stage).", "ja": "{description}（{stage}ステージ）。"},
    "sum.smaller": {"en": "{ratio} smaller than the FP32 reference ({size} against {ref_size})",
                    "ja": "サイズは FP32 基準の {ratio_plain} 分の 1（{size}、基準 {ref_size}）"},
    "sum.larger": {"en": "the same size as the FP32 reference or larger ({size} against {ref_size})",
                   "ja": "サイズは FP32 基準と同じかそれ以上（{size}、基準 {ref_size}）"},
    "sum.is_reference": {"en": "it is the FP32 reference itself ({size})", "ja": "FP32 基準そのもの（{size}）"},
    "sum.noise": {"en": "accuracy change within noise ({delta} pp, 95% interval {ci}, McNemar {p})",
                  "ja": "精度の変化は誤差の範囲内（{delta} ポイント、95% 信頼区間 {ci}、McNemar 検定 {p}）"},
    "sum.loss": {"en": "a measurable accuracy loss of {abs} pp (95% interval {ci}, McNemar {p})",
                 "ja": "精度は有意に {abs} ポイント低下（95% 信頼区間 {ci}、McNemar 検定 {p}）"},
    "sum.gain": {"en": "a measurable accuracy gain of {abs} pp (95% interval {ci}, McNemar {p})",
                 "ja": "精度は有意に {abs} ポイント向上（95% 信頼区間 {ci}、McNemar 検定 {p}）"},
    "sum.sentence": {"en": "{name} is {size_part}, with {acc_part}.", "ja": "{name}：{size_part}。{acc_part}。"},
    "sum.sentence_ref": {"en": "{name}: {size_part}.", "ja": "{name}：{size_part}。"},
    "sum.lat_reference": {
        "en": "Its latency, {ms} median, was measured with the playbook's reference executor on a Linux CPU. That is "
              "the cost of this executor on this machine, not the speed on an iPhone or a Mac: the executor "
              "decompresses every weight once at load and computes in float32, so its timings do not rank the "
              "variants for a device and played no part in this choice [1].",
        "ja": "レイテンシ（中央値 {ms}）は、プレイブックのリファレンス実行系で Linux の CPU 上で測ったものです。"
              "これはこのマシンでの実行系のコストであり、iPhone や Mac での速度ではありません。リファレンス実行系は"
              "読み込み時にすべての重みを一度展開し float32 で計算するため、この値ではデバイス上の速さの順位は"
              "わからず、推奨の判断にも使っていません [1]。"},
    "sum.lat_slower": {
        "en": "There it is slower than FP32 ({ms} against {ref_ms}) because {why}; on a device the order may differ, "
              "so measure it there.",
        "ja": "この実行系では FP32 より遅くなっています（{ms}、FP32 は {ref_ms}）。{why}ためです。"
              "デバイス上では順位が変わりうるため、実機で測定してください。"},
    "why.fp16": {"en": "an FP16 program adds rounding casts that this executor runs in float32",
                 "ja": "FP16 プログラムでは丸めのためのキャスト処理が加わり、この実行系はそれを float32 で実行する"},
    "why.w8a8": {"en": "a W8A8 program adds quantize and dequantize ops around every layer",
                 "ja": "W8A8 プログラムでは各層の前後に量子化・逆量子化の演算が加わる"},
    "why.other": {"en": "this executor does extra work for this program that a device runtime may not",
                  "ja": "このプログラムではリファレンス実行系に余分な処理が発生する（デバイスのランタイムでも同じとは限らない）"},
    "sum.lat_device": {"en": "Its latency, {ms} median, was measured with {where}.",
                       "ja": "レイテンシ（中央値 {ms}）は {where} で測定しました。"},
    "sum.lat_none": {"en": "Its latency was not measured.", "ja": "レイテンシは測定されていません。"},
    "card.size": {"en": "Package size", "ja": "パッケージサイズ"},
    "card.size_note": {"en": "{ratio} smaller than FP32", "ja": "FP32 の {ratio_plain} 分の 1"},
    "card.top1": {"en": "Test top-1", "ja": "テスト top-1"},
    "card.top1_note": {"en": "{delta} pp against FP32", "ja": "FP32 比 {delta} ポイント"},
    "card.latency": {"en": "Latency (median)", "ja": "レイテンシ（中央値）"},
    "card.latency_ref": {"en": "reference executor on a Linux CPU, not a device",
                         "ja": "Linux CPU 上のリファレンス実行系（実機ではない）"},
    "card.target": {"en": "Minimum deployment target", "ja": "最小デプロイメントターゲット"},
    "card.target_note": {"en": "the app must require at least this", "ja": "アプリの対応 OS はこれ以上が必要"},
    "card.reference": {"en": "the reference", "ja": "基準そのもの"},

    # ---- recommendation
    "rec.budget": {"en": "Your budget", "ja": "予算（許容条件）"},
    "rec.budget_text": {"en": "top-1 loss against FP32 at most {drop} pp; {size}; {latency}.",
                        "ja": "FP32 基準からの top-1 低下は {drop} ポイント以内、{size}、{latency}。"},
    "rec.size_limit": {"en": "size at most {mb}", "ja": "サイズ {mb} 以下"},
    "rec.size_free": {"en": "no size limit", "ja": "サイズ上限なし"},
    "rec.lat_limit": {"en": "latency at most {ms} (measured on a device)", "ja": "レイテンシ {ms} 以下（実機測定値）"},
    "rec.lat_free": {"en": "no latency limit", "ja": "レイテンシ上限なし"},
    "rec.objective": {"en": "Objective", "ja": "最適化の目標"},
    "obj.size": {"en": "the smallest package among the variants within budget",
                 "ja": "予算内のバリアントのうちパッケージが最も小さいもの"},
    "obj.accuracy": {"en": "the most accurate variant within budget", "ja": "予算内で最も精度の高いもの"},
    "obj.latency": {"en": "the fastest variant within budget, on a device", "ja": "予算内で実機上最も速いもの"},
    "obj.fallback": {"en": " (latency was measured only by the reference executor, which cannot rank variants for a "
                           "device, so latency does not decide)",
                     "ja": "（レイテンシはリファレンス実行系でしか測定されておらず、デバイス上の順位を示さないため判断に"
                           "使いません）"},
    "rec.count": {"en": "{n} of {total} variants meet the budget.", "ja": "{total} 個中 {n} 個のバリアントが予算を満たしています。"},
    "rec.best_size": {"en": "{name} is the smallest of them, {value}.", "ja": "そのうち最も小さいのは {name}（{value}）です。"},
    "rec.best_accuracy": {"en": "{name} is the most accurate of them, {value} top-1.",
                          "ja": "そのうち最も精度が高いのは {name}（top-1 {value}）です。"},
    "rec.best_latency": {"en": "{name} is the fastest of them on a device, {value}.",
                         "ja": "そのうち実機で最も速いのは {name}（{value}）です。"},
    "rec.next_larger": {"en": "Next best: {name}, {value}, {ratio} larger.",
                        "ja": "次点は {name}（{value}）で、{ratio_plain} 倍の大きさです。"},
    "rec.next_tie_size": {"en": "Next best: {name}, the same size ({value}); the tie went to the higher top-1.",
                          "ja": "次点は {name} で同じサイズ（{value}）です。同サイズの場合は top-1 の高い方を選びます。"},
    "rec.next_other": {"en": "Next best: {name}, {value}.", "ja": "次点は {name}（{value}）です。"},
    "rec.caution": {
        "en": "Caution: the 95% interval of its top-1 loss reaches {high} pp, beyond the {budget} pp budget, so this "
              "test set cannot rule out a larger loss. Evaluate it on more images before relying on it.",
        "ja": "注意：top-1 低下の 95% 信頼区間の上限は {high} ポイントで、許容の {budget} ポイントを超えています。"
              "このテストセットでは、より大きな低下の可能性を否定できません。判断の前により多くの画像で評価してください。"},
    "rec.closest": {"en": "No variant meets the budget. The closest, {name}, misses: {missed}.",
                    "ja": "予算を満たすバリアントはありません。最も近い {name} は次の条件を満たしていません：{missed}。"},
    "rec.miss_drop": {"en": "top-1 loss {value} pp > {limit} pp", "ja": "top-1 低下 {value} ポイント（上限 {limit}）"},
    "rec.miss_size": {"en": "size {value} > {limit}", "ja": "サイズ {value}（上限 {limit}）"},
    "rec.miss_latency": {"en": "latency {value} > {limit}", "ja": "レイテンシ {value}（上限 {limit}）"},
    "rec.miss_unmeasured": {"en": "{axis} not measured on a device", "ja": "{axis}が実機で未測定"},
    "rec.technique": {"en": "Technique", "ja": "手法の比較"},
    "rec.tech_one": {"en": "Only the {stages} stage has produced variants so far, so techniques cannot be compared yet.",
                     "ja": "これまでに変換結果があるのは{stages}ステージだけなので、手法どうしの比較はまだできません。"},
    "rec.tech_none": {"en": "Only the baseline has been measured; there is no technique to compare yet.",
                      "ja": "測定済みなのはベースラインだけで、比較できる手法はまだありません。"},
    "rec.tech_compare": {"en": "Within your budget, the most accurate compressed variant comes from {acc_stage} "
                               "({acc_name}, {acc}) and the smallest from {size_stage} ({size_name}, {size}).",
                         "ja": "予算内で最も精度が高いのは{acc_stage}の {acc_name}（{acc}）、最も小さいのは"
                               "{size_stage}の {size_name}（{size}）です。"},

    # ---- charts
    "chart.size.caption": {
        "en": "Each point is a variant with its 95% interval of test top-1. The axis is zoomed to the candidates; "
              "variants far below are drawn as triangles on the bottom edge, with their top-1 in their label (or, "
              "when there are many, in the note under the title). The "
              "dashed grey step is the Pareto front, the dotted red line your accuracy budget, the ring the "
              "recommendation. Overlapping intervals do not mean two variants are equally accurate: their paired "
              "change and McNemar's test in the table below answer that [6].",
        "ja": "各点はバリアントで、縦棒はテスト top-1 の 95% 信頼区間です。縦軸は候補の範囲に拡大しており、大きく下回る"
              "バリアントは下端に三角で示し、top-1 をラベル（多い場合はタイトル下の注記）に記しています。灰色の破線の階段は"
              "パレートフロント、赤い点線は"
              "精度の許容範囲、丸印は推奨です。区間が重なっていても精度が同じとは限りません。2 つのバリアントの差は、"
              "下の表の対応のある差の信頼区間と McNemar 検定で判断してください [6]。"},
    "chart.latency.caption": {
        "en": "Latency here was measured with {where}. It is shown for completeness and did not rank the variants: "
              "off a Mac both the reference executor and the host backend expand every weight at load and compute "
              "every variant in float32, so their order says nothing about a device [1].",
        "ja": "ここでのレイテンシは{where}で測定した値です。参考として示しており、順位付けには使っていません。Mac 以外では"
              "リファレンス実行系もホストのバックエンドも重みをロード時にすべて展開し、どのバリアントも float32 で計算するため、"
              "その順序はデバイス上の速さを表しません [1]。"},

    # ---- table
    "col.variant": {"en": "Variant", "ja": "バリアント"},
    "col.stage": {"en": "Stage", "ja": "ステージ"},
    "col.top1": {"en": "Top-1 % [95% CI]", "ja": "top-1 %［95% CI］"},
    "col.delta": {"en": "Δ top-1 vs FP32, pp [95% CI]", "ja": "FP32 比 Δ top-1（ポイント）［95% CI］"},
    "col.p": {"en": "McNemar p", "ja": "McNemar p 値"},
    "col.size": {"en": "Size MB (× smaller)", "ja": "サイズ MB（縮小率）"},
    "col.zip": {"en": "Download MB (zip)", "ja": "ダウンロード MB（zip）"},
    "col.latency": {"en": "Latency ms, median / p90", "ja": "レイテンシ ms 中央値 / p90"},
    "col.where": {"en": "Latency measured on", "ja": "レイテンシの測定環境"},
    "col.memory": {"en": "Peak memory MB", "ja": "ピークメモリ MB"},
    "col.energy": {"en": "Energy mJ / prediction", "ja": "エネルギー mJ / 推論"},
    "col.target": {"en": "Min. iOS", "ja": "最小 iOS"},
    "col.budget": {"en": "Meets budget", "ja": "予算"},
    "tag.reference": {"en": "reference", "ja": "基準"},
    "tag.recommended": {"en": "recommended", "ja": "推奨"},
    "tag.closest": {"en": "closest", "ja": "最も近い"},
    "chart.provisional": {"en": "provisional choice", "ja": "暫定の候補"},
    "yes": {"en": "yes", "ja": "満たす"},
    "no": {"en": "no", "ja": "満たさない"},
    "not_measured": {"en": "not measured", "ja": "未測定"},
    "where.reference": {"en": "the reference executor on a Linux CPU", "ja": "リファレンス実行系（Linux CPU）"},
    "where.coreml": {"en": "Core ML runtime{units}{device}", "ja": "Core ML ランタイム{units}{device}"},
    "where.unknown": {"en": "runtime not recorded", "ja": "実行環境の記録なし"},
    "where.torch": {"en": "the package's program run as float32 PyTorch ops on this host's CPU{threads} ({device}): "
                          "a host figure, not an Apple device",
                    "ja": "このホスト CPU 上の PyTorch 演算（パッケージのプログラムを float32 で実行{threads}、{device}。"
                          "Apple デバイスではなくホストの値）"},
    "table.delta_note": {
        "en": "Δ top-1 is the variant's top-1 minus the FP32 reference's on the same test images (negative = worse), "
              "with a paired bootstrap 95% interval and McNemar's exact test [6][7]. Provenance of each figure:",
        "ja": "Δ top-1 は同じテスト画像での「バリアントの top-1 − FP32 基準の top-1」です（負の値は悪化）。"
              "対応のあるブートストラップ 95% 信頼区間と McNemar の正確検定を添えています [6][7]。各数値の出所："},
    "prov.reference": {"en": "{axis}: reference executor{device}, not Apple's Core ML runtime{what}",
                       "ja": "{axis}：リファレンス実行系{device}。Apple の Core ML ランタイムではありません{what}"},
    "prov.device": {"en": " on {device}", "ja": "（{device}）"},
    "prov.coreml": {"en": "{axis}: Core ML runtime{units}{device}{what}",
                    "ja": "{axis}：Core ML ランタイム{units}{device}{what}"},
    "prov.size": {"en": "size: bytes of the .mlpackage files on disk; download size zipped with DEFLATE",
                  "ja": "サイズ：ディスク上の .mlpackage の合計バイト数。ダウンロードサイズは DEFLATE で zip 圧縮した値"},
    "prov.unmeasured": {"en": "{axis}: not measured ({what})", "ja": "{axis}：未測定（{what}）"},
    "prov.unknown": {"en": "{axis}: provenance not recorded", "ja": "{axis}：出所の記録なし"},
    "axis.accuracy": {"en": "accuracy", "ja": "精度"},
    "axis.latency": {"en": "latency", "ja": "レイテンシ"},
    "axis.memory": {"en": "memory", "ja": "メモリ"},
    "axis.energy": {"en": "energy", "ja": "エネルギー"},
    "axis.size": {"en": "size", "ja": "サイズ"},
    "test_images": {"en": "; {n} test images", "ja": "、テスト画像 {n} 枚"},
    "measured_on": {"en": "Measured on: {env}.", "ja": "測定環境：{env}。"},
    "no_variants": {"en": "No variants were measured.", "ja": "測定済みのバリアントはありません。"},

    # ---- per class
    "pc.intro": {"en": "Accuracy of the FP32 PyTorch model on each class of the {n} test images. The stage records keep "
                       "per-class accuracy for this model only, not for each variant; the weakest class is {weak} ({acc}).",
                 "ja": "テスト画像 {n} 枚における FP32 の PyTorch モデルのクラス別精度です。ステージ記録にはこのモデルの"
                       "クラス別精度のみがあり、各バリアントの値はありません。最も低いクラスは {weak}（{acc}）です。"},
    "pc.class": {"en": "Class", "ja": "クラス"},
    "pc.accuracy": {"en": "Top-1 %", "ja": "top-1 %"},
    "pc.none": {"en": "The baseline record holds no per-class accuracy.",
                "ja": "ベースラインの記録にクラス別精度がありません。"},

    # ---- deliverables
    "del.package": {"en": "Package", "ja": "パッケージ"},
    "del.package_where": {"en": "in the same folder as this report ({folder}/)", "ja": "（このレポートと同じフォルダ {folder}/ 内）"},
    "del.outside": {"en": "It is outside your budget: it is the closest variant, not a recommendation.",
                    "ja": "予算外です。推奨ではなく、最も条件に近いバリアントです。"},
    "del.facts": {"en": "What Xcode will show", "ja": "Xcode で表示される情報"},
    "del.target": {"en": "Minimum deployment target", "ja": "最小デプロイメントターゲット"},
    "del.target_value": {"en": "{target} (the app must require {os} or later)",
                         "ja": "{target}（アプリの対応 OS を {os} 以降にする必要があります）"},
    "del.precision": {"en": "Compute precision", "ja": "演算精度"},
    "del.compression": {"en": "Weights", "ja": "重み"},
    "del.io": {"en": "Inputs and outputs", "ja": "入力と出力"},
    "del.sha": {"en": "Package SHA-256", "ja": "パッケージの SHA-256"},
    "del.metadata": {"en": "Metadata stored in the package", "ja": "パッケージに保存されたメタデータ"},
    "del.no_metadata": {"en": "The package is not on this machine, so its metadata cannot be shown.",
                        "ja": "パッケージがこのマシンにないため、メタデータを表示できません。"},
    "del.swift": {"en": "Swift: from a CGImage or CVPixelBuffer to a class label",
                  "ja": "Swift：CGImage / CVPixelBuffer からクラスラベルまで"},
    "del.swift_note": {"en": "Input and output names and types are read from the package itself.",
                       "ja": "入出力の名前と型はパッケージ自体から読み取っています。"},
    "del.no_swift": {"en": "The record does not hold the package's inputs and outputs, so no Swift can be written.",
                     "ja": "記録にパッケージの入出力情報がないため、Swift コードを生成できません。"},
    "del.reproduce": {"en": "Reproduce this report", "ja": "このレポートの再現"},
    "del.device": {"en": "Latency on devices, and how to measure on an iPhone",
                   "ja": "デバイスでのレイテンシと iPhone での測定方法"},
    "del.reproduce_note": {"en": "From a checkout of the playbook, this one command re-runs every stage with the same "
                                 "parameters and budget (finished stages are skipped).",
                           "ja": "プレイブックのチェックアウトで次の 1 コマンドを実行すると、同じパラメータと予算で全ステージを"
                                 "再実行します（完了済みのステージはスキップされます）。"},
    "del.none": {"en": "No variant to deliver.", "ja": "納品できるバリアントはありません。"},

    # ---- next steps
    "next.smoke": {"en": "Run without --smoke ({command}): this report's figures come from tiny data.",
                   "ja": "--smoke を付けずに実行してください（{command}）。このレポートの数値は小規模データによるものです。"},
    "next.warnings": {"en": "Resolve the baseline's warning first (for example train for more epochs with -p epochs=N) "
                            "and re-run: every variant inherits the baseline's accuracy.",
                      "ja": "まずベースラインの警告を解消してください（例：-p epochs=N でエポック数を増やす）。"
                            "すべてのバリアントがベースラインの精度を引き継ぎます。"},
    "next.device": {"en": "Measure {name} on the target device before setting a latency budget: the benchmark stage "
                          "(05) or Xcode's Core ML performance report [2]. No latency here was measured on a device.",
                    "ja": "レイテンシの上限を決める前に、{name} を対象デバイスで測定してください（ベンチマークステージ 05、"
                          "または Xcode の Core ML パフォーマンスレポート [2]）。このレポートのレイテンシはどれも実機の値では"
                          "ありません。"},
    "next.more_images": {"en": "Evaluate {name} on more test images: the 95% interval of its loss reaches {high} pp.",
                         "ja": "{name} をより多くのテスト画像で評価してください。低下量の 95% 信頼区間の上限が {high} "
                               "ポイントに達しています。"},
    "next.stage": {"en": "Run stage {number} ({title}) to add candidates: {why}",
                   "ja": "ステージ {number}（{title}）を実行して候補を増やしてください：{why}"},
    "why.distillation": {"en": "a small student trained to match this model's outputs can be more accurate than the "
                               "same student trained alone [8].",
                         "ja": "このモデルの出力に合わせて学習させた小さな生徒モデルは、単独で学習させた同じモデルより"
                               "精度が高くなりうるためです [8]。"},
    "why.architecture": {"en": "another architecture may trade size for accuracy better than compressing this one; "
                               "the stage measures it.",
                         "ja": "このモデルを圧縮するより、別のアーキテクチャの方がサイズと精度の釣り合いが良い可能性があり、"
                               "このステージで測定できます。"},
    "why.benchmark": {"en": "only a device gives latencies that can rank the variants.",
                      "ja": "バリアントの速さの順位は実機の測定でしかわかりません。"},
    "why.quantization": {"en": "quantization, palettization and pruning make the package smaller [3][4][5].",
                         "ja": "量子化・パレタイズ・枝刈りでパッケージを小さくできます [3][4][5]。"},
    "next.weak_class": {"en": "Look at the weakest class, {name} ({acc} in FP32): more or cleaner training images of it "
                              "help every variant.",
                        "ja": "最も精度の低いクラス {name}（FP32 で {acc}）を確認してください。このクラスの学習画像を増やす・"
                              "整えることはすべてのバリアントに効きます。"},
    "next.relax": {"en": "No variant meets the budget: relax it (e.g. --budget max_top1_drop=2) or add candidates with "
                         "the stages above.",
                   "ja": "予算を満たすバリアントがありません。予算を緩める（例：--budget max_top1_drop=2）か、上記の"
                         "ステージで候補を増やしてください。"},
    "next.ship": {"en": "Add {path} to the Xcode project and check its outputs against a few images with known labels "
                        "(the Swift in the deliverables).",
                  "ja": "{path} を Xcode プロジェクトに追加し、正解のわかっている数枚の画像で出力を確かめてください"
                        "（成果物の Swift を参照）。"},

    # ---- risks
    "risk.runtime": {"en": "Accuracy, latency and memory were measured through the playbook's reference executor on "
                           "Linux, not Apple's Core ML runtime [1]. Its top-1 is that of the saved program as this "
                           "executor runs it: confirm it on the device with a few hundred labelled images. Its latency "
                           "and memory say nothing about a device.",
                     "ja": "精度・レイテンシ・メモリは、Apple の Core ML ランタイムではなく Linux 上のプレイブックの"
                           "リファレンス実行系で測定しました [1]。top-1 は保存したプログラムをこの実行系で動かした値なので、"
                           "正解付きの画像数百枚で実機でも確認してください。レイテンシとメモリは実機の値を表しません。"},
    "risk.coreml": {"en": "Figures measured with Core ML on {device}; other devices and OS versions can differ.",
                    "ja": "数値は {device} 上の Core ML で測定したものです。他のデバイスや OS バージョンでは異なる場合があります。"},
    "risk.test_size": {"en": "Accuracy rests on {n} test images: the 95% interval of the recommended variant's top-1 is "
                             "{ci}, about ±{half} points.",
                       "ja": "精度はテスト画像 {n} 枚に基づきます。推奨バリアントの top-1 の 95% 信頼区間は {ci}"
                             "（約 ±{half} ポイント）です。"},
    "risk.energy": {"en": "Energy was not measured on this platform.", "ja": "このプラットフォームではエネルギーを測定していません。"},
    "risk.memory": {"en": "Weight compression shrinks the download; runtime memory drops only where the backend "
                          "decompresses weights just in time, and some backends decompress them fully at load [3].",
                    "ja": "重みの圧縮でダウンロードサイズは小さくなりますが、実行時メモリが減るのはバックエンドが重みを必要な"
                          "ときに展開する場合だけで、読み込み時にすべて展開するバックエンドもあります [3]。"},
    "risk.target": {"en": "{name} needs {target} or later ({os}); older devices cannot load it.",
                    "ja": "{name} には {target} 以降（{os}）が必要で、それより古いデバイスでは読み込めません。"},
    "risk.domain": {"en": "The test images come from {dataset}. Images from your app (other cameras, framing, "
                          "lighting) can score lower: check on a sample of real inputs.",
                    "ja": "テスト画像は {dataset} のものです。アプリで実際に扱う画像（カメラ・構図・照明の違い）では精度が"
                          "下がることがあるため、実データのサンプルで確認してください。"},

    # ---- methodology
    "m.test": {"en": "Test set: {n} images of {dataset}{subset}, the same images for every variant.",
               "ja": "テストセット：{dataset} の画像 {n} 枚{subset}。すべてのバリアントで同じ画像を使用。"},
    "m.subset": {"en": " (a smoke subset)", "ja": "（スモーク用の部分集合）"},
    "m.accuracy": {"en": "Accuracy: top-1 of each exported package, with a 95% bootstrap interval over {resamples} "
                         "resamples of the test images [7].",
                   "ja": "精度：書き出した各パッケージの top-1。テスト画像を {resamples} 回リサンプリングした"
                         "ブートストラップ 95% 信頼区間付き [7]。"},
    "m.paired": {"en": "Change against FP32: paired on the same images, with a paired bootstrap interval and McNemar's "
                       "exact test on the images where only one of the two is right [6][7].",
                 "ja": "FP32 との差：同じ画像で対応をとり、対応のあるブートストラップ信頼区間と、片方だけが正解した画像に"
                       "対する McNemar の正確検定で評価 [6][7]。"},
    "m.calibration": {"en": "Calibration: {n} images set aside for data-aware compression (activation ranges, "
                            "sensitivity).",
                      "ja": "キャリブレーション：データを使う圧縮（活性化の範囲、感度分析）用に {n} 枚を別に確保。"},
    "m.training": {"en": "Training: {epochs} epoch(s) (learning rate {lr}, batch {batch}); last validation top-1 {val}.",
                   "ja": "学習：{epochs} エポック（学習率 {lr}、バッチ {batch}）、最終の検証 top-1 は {val}。"},
    "m.training_loaded": {"en": "Training: the model was loaded from a checkpoint; no training history is recorded.",
                          "ja": "学習：モデルはチェックポイントから読み込んだため、学習履歴の記録はありません。"},
    "m.latency": {"en": "Latency: batch 1, {warmup} warm-up runs, then {repeats} timed runs; median and p90, "
                        "{threads} thread(s), on {where}. The machine may have been shared with other work.",
                  "ja": "レイテンシ：バッチ 1、ウォームアップ {warmup} 回の後に {repeats} 回計測し、中央値と p90 を算出。"
                        "スレッド数 {threads}、測定環境は {where}。他の処理とマシンを共有していた可能性があります。"},
    "m.size": {"en": "Size: bytes of the .mlpackage on disk; download size after DEFLATE zip.",
               "ja": "サイズ：ディスク上の .mlpackage のバイト数。ダウンロードサイズは DEFLATE で zip 圧縮した後の値。"},
    "m.memory": {"en": "Memory: rise of the peak resident memory of a fresh process while loading the package and "
                       "predicting once.",
                 "ja": "メモリ：新しいプロセスでパッケージを読み込み 1 回推論したときの、常駐メモリのピークの増加分。"},
    "m.environment": {"en": "Environment: {env}.", "ja": "環境：{env}。"},

    # ---- glossary (term, definition)
    "g.pp": {"en": "pp (percentage points)|The difference between two percentages: 92.0% to 91.5% is −0.5 pp.",
             "ja": "ポイント（pp）|2 つの百分率の差。92.0% から 91.5% への変化は −0.5 ポイント。"},
    "g.top1": {"en": "top-1|The share of test images whose highest-scoring class is the right one.",
               "ja": "top-1|最もスコアの高いクラスが正解だったテスト画像の割合。"},
    "g.ci": {"en": "95% interval|The range that the true value falls in with 95% confidence, given the test images.",
             "ja": "95% 信頼区間|テスト画像から推定した、真の値が 95% の確信度で含まれる範囲。"},
    "g.mcnemar": {"en": "McNemar's test|A test of whether two models that saw the same images differ in accuracy; a "
                        "small p means the difference is unlikely to be chance [6].",
                  "ja": "McNemar 検定|同じ画像で評価した 2 つのモデルの精度に差があるかを調べる検定。p 値が小さいほど、"
                        "差が偶然である可能性は低い [6]。"},
    "g.p90": {"en": "p90|The latency that 90% of runs stay under.", "ja": "p90|計測の 90% がそれ以下に収まるレイテンシ。"},
    "g.quant": {"en": "Quantization (weight-only)|Storing weights as 8- or 4-bit integers with scales; the arithmetic "
                      "stays in floating point [10].",
                "ja": "量子化（重みのみ）|重みをスケール付きの 8 ビットや 4 ビット整数で保存する手法。演算は浮動小数点のまま "
                      "[10]。"},
    "g.w8a8": {"en": "W8A8|Weights and activations both 8-bit. The faster int8-int8 compute path is on the Neural Engine "
                     "of A17 Pro / M4 and later; elsewhere it can be slower than weight-only [4].",
               "ja": "W8A8|重みと活性化の両方を 8 ビットにする手法。int8 同士の高速な演算経路は A17 Pro / M4 以降の "
                     "Neural Engine にあり、それ以外では重みのみの量子化より遅くなることがある [4]。"},
    "g.pal": {"en": "Palettization|Each weight is replaced by an index into a small table of values (a lookup table of "
                    "2^n entries for n bits) [5].",
              "ja": "パレタイズ|各重みを、小さな値の表（n ビットなら 2^n 個のルックアップテーブル）へのインデックスに置き換える"
                    "手法 [5]。"},
    "g.prune": {"en": "Pruning|Setting the smallest weights to zero and storing the tensor sparsely.",
                "ja": "枝刈り（プルーニング）|小さな重みを 0 にし、テンソルを疎な形式で保存する手法。"},
    "g.qat": {"en": "QAT|Quantization-aware training: fine-tuning with simulated quantization so the model adapts to "
                    "it [9].",
              "ja": "QAT|量子化を考慮した学習。量子化を模擬しながら再学習し、モデルを量子化に適応させる [9]。"},
    "g.distill": {"en": "Distillation|Training a small student to match a large teacher's outputs [8].",
                  "ja": "蒸留|小さな生徒モデルを大きな教師モデルの出力に合わせて学習させる手法 [8]。"},
    "g.ane": {"en": "Neural Engine|The machine-learning accelerator of Apple's chips; Core ML decides which operations "
                    "run on it, the GPU or the CPU, and Xcode's performance report shows where each one ran [2].",
              "ja": "Neural Engine|Apple のチップに搭載された機械学習用アクセラレータ。どの演算を Neural Engine・GPU・CPU の"
                    "どれで実行するかは Core ML が決め、Xcode のパフォーマンスレポートで各演算の実行先を確認できる [2]。"},
    "g.ref": {"en": "Reference executor|The playbook's Linux implementation of Core ML programs (PyTorch ops, float32), "
                    "used where Apple's runtime is unavailable; a correctness tool, not a speed gauge [1].",
              "ja": "リファレンス実行系|Apple のランタイムがない Linux で Core ML プログラムを実行するためのプレイブック独自の"
                    "実装（PyTorch の演算、float32）。正しさを確かめる道具であり、速度の目安ではない [1]。"},
    "g.target": {"en": "Deployment target|The oldest OS that can load the package (iOS 17 also means macOS 14).",
                 "ja": "デプロイメントターゲット|そのパッケージを読み込める最も古い OS（iOS 17 は macOS 14 に対応）。"},
    "g.pareto": {"en": "Pareto front|The variants that no other variant beats on both size and accuracy.",
                 "ja": "パレートフロント|サイズと精度の両方で他のどのバリアントにも負けないバリアントの集合。"},

    # ---- what a variant is (Japanese report; the English one shows the recipe's own description)
    "tech.quantization": {"en": "{bits}-bit integer weights", "ja": "{bits} ビット整数への重みの量子化"},
    "tech.palettization": {"en": "{bits}-bit palettized weights ({values}-entry lookup table)",
                           "ja": "{bits} ビットのパレタイズ（重みを {values} 個の値のルックアップテーブルで表現）"},
    "tech.pruning": {"en": "pruned weights", "ja": "枝刈り（小さな重みを 0 にして疎な形式で保存）"},
    "tech.joint": {"en": "pruning and palettization together", "ja": "枝刈りとパレタイズの複合圧縮"},
    "tech.activation-quantization": {"en": "8-bit weights and activations (W8A8)",
                                     "ja": "重みと活性化の 8 ビット量子化（W8A8）"},
    "tech.data-aware": {"en": "compression with calibration or fine-tuning data",
                        "ja": "データを使う圧縮（キャリブレーションまたは再学習）"},
    "tech.precision": {"en": "a change of compute precision", "ja": "演算精度の変更"},
    "tech.fp32": {"en": "FP32 ML program", "ja": "FP32 の ML プログラム（比較の基準）"},
    "tech.fp16": {"en": "FP16 ML program", "ja": "FP16 の ML プログラム（標準の Core ML 書き出し）"},
    "tech.keep": {"en": ", {n} most damaging layer(s) kept float", "ja": "、影響の大きい {n} 層は浮動小数点のまま"},
    "tech.mixed-bits": {"en": "a palette size per layer (from {choices} bits), chosen on validation images from each "
                               "layer's measured damage, within {share}% of the accuracy budget",
                        "ja": "層ごとに異なるパレットサイズ（{choices} ビットから選択）。各層の測定した影響をもとに検証画像で選び、"
                              "精度予算の {share}% 以内に収める"},
    "tech.algo.w8a8-static": {"en": "8-bit weights and activations, calibrated after training (static W8A8)",
                              "ja": "学習後にキャリブレーションした重みと活性化の 8 ビット量子化（静的 W8A8）"},
    "tech.algo.qat": {"en": "8-bit weights and activations learned while fine-tuning (QAT)",
                      "ja": "再学習しながら学ぶ重みと活性化の 8 ビット量子化（量子化認識学習、QAT）"},
    "tech.algo.prune-finetune": {"en": "{sparsity}% magnitude pruning reached gradually while fine-tuning",
                                 "ja": "再学習しながら段階的に {sparsity}% まで進める大きさ基準の枝刈り"},
    "tech.algo.skm": {"en": "{bits}-bit palettes weighted by calibration-data sensitivity (SKM)",
                      "ja": "キャリブレーションデータで測った感度で重み付けした {bits} ビットのパレット（SKM）"},
    "tech.algo.dkm": {"en": "{bits}-bit palettes learned while fine-tuning with differentiable k-means (DKM)",
                      "ja": "微分可能 k-means（DKM）で再学習しながら学ぶ {bits} ビットのパレット"},
    "tech.algo.dkm-mixed": {"en": "the per-layer palette sizes {source} chose, learned while fine-tuning (DKM)",
                            "ja": "{source} が選んだ層ごとのパレットサイズを、微分可能 k-means（DKM）で再学習しながら学ぶ"},
    "tech.algo.ptq": {"en": "{bits}-bit integer weights quantized in PyTorch", "ja": "PyTorch 側での {bits} ビット整数への重みの量子化"},
    "tech.then-palette": {"en": ", then the survivors on a {bits}-bit palette after conversion (joint compression)",
                          "ja": "。変換後、残った重みを {bits} ビットのパレットで表現（複合圧縮）"},
    "tech.student": {"en": "distilled {student} student ({params} parameters, {ratio} of the teacher), FP16, uncompressed",
                     "ja": "蒸留した {student} 生徒モデル（パラメータ {params}、教師の {ratio}）、FP16、非圧縮"},
    "tech.student-compressed": {"en": "distilled {student} student compressed with {recipe}: {what}",
                                "ja": "蒸留した {student} 生徒モデルを {recipe} で圧縮：{what}"},
    "tech.family": {"en": "{family} ({knobs}) trained with the baseline's config for {epochs} epoch(s) at peak lr {lr}, "
                          "FP16 ML program",
                    "ja": "{family}（{knobs}）をベースラインの設定で {epochs} エポック学習（最大学習率 {lr}）、FP16 の ML プログラム"},

    # ---- stage names
    "stage.baseline": {"en": "baseline", "ja": "ベースライン"},
    "stage.quantization": {"en": "quantization", "ja": "量子化・圧縮"},
    "stage.distillation": {"en": "distillation", "ja": "蒸留"},
    "stage.architecture": {"en": "architecture", "ja": "アーキテクチャ変更"},
    "stage.benchmark": {"en": "benchmark", "ja": "ベンチマーク"},
    "stage.report": {"en": "report", "ja": "レポート"},

    # ---- index and failure pages
    "idx.title": {"en": "Core ML optimization playbook: reports", "ja": "Core ML 最適化プレイブック：レポート一覧"},
    "fail.title": {"en": "Report for {model}: FAILED", "ja": "{model} のレポート：失敗"},
    "fail.text": {"en": "The run failed{where} ({when}). No report was produced; no figure on this page is a result.",
                  "ja": "実行が失敗しました{where}（{when}）。レポートは作成されておらず、このページの内容は結果ではありません。"},
    "fail.where": {"en": " in stage {stage}", "ja": "（ステージ {stage}）"},
}
