"""The report's messages for the "Core ML or Core AI" section (``report.coreai``), in English and Japanese.
Merged into ``messages.MESSAGES``; every key has both languages (``tests/test_report.py`` checks it)."""
from __future__ import annotations

COREAI_MESSAGES: dict[str, dict[str, str]] = {
    "sec.coreai": {"en": "Core ML or Core AI", "ja": "Core ML か Core AI か"},
    "cai.intro": {
        "en": "The same trained model can ship as a Core ML package (.mlpackage) or as a Core AI model (.aimodel). A "
              "Core AI model loads only on iOS / macOS {min_os} or later; an app that supports older systems ships "
              "the Core ML package. Below, for each, the variant this report would deliver under your budgets.",
        "ja": "同じ学習済みモデルを Core ML パッケージ（.mlpackage）としても Core AI モデル（.aimodel）としても配布"
              "できます。Core AI モデルを読み込めるのは iOS / macOS {min_os} 以降だけで、それより古い OS も対象の"
              "アプリは Core ML パッケージを使います。以下はそれぞれについて、このレポートの許容条件で届けるバリアント"
              "です。"},
    "cai.target_here": {
        "en": "Your deployment target: {target} ({where}).",
        "ja": "デプロイメントターゲット：{target}（{where}）。"},
    "cai.where.budget": {"en": "the report's app_target parameter", "ja": "レポートの app_target パラメータ"},
    "cai.where.baseline": {"en": "the baseline's deployment_target; set app_target to change it",
                           "ja": "ベースラインの deployment_target。app_target で変更できます"},
    "cai.where.unknown": {"en": "not known; set app_target", "ja": "不明。app_target を指定してください"},
    "cai.compete": {
        "en": "Core AI models competed with the Core ML packages in the recommendation: your deployment target is "
              "{target}.",
        "ja": "デプロイメントターゲットが {target} なので、推奨では Core AI モデルも Core ML パッケージと同じ条件で"
              "比較しました。"},
    "cai.excluded": {
        "en": "Core AI models did not compete in the recommendation: they load only on iOS / macOS {min_os} or later "
              "and your deployment target is {target}. Set app_target='iOS{min_os}' (or later) to let them compete.",
        "ja": "Core AI モデルは推奨の比較対象にしていません。読み込めるのは iOS / macOS {min_os} 以降だけで、"
              "デプロイメントターゲットが {target} だからです。比較に含めるには app_target='iOS{min_os}'（以降）を"
              "指定してください。"},
    "cai.framework_only": {
        "en": "The budget asks for {framework} only (framework='{key}').",
        "ja": "許容条件で {framework} だけを対象にしています（framework='{key}'）。"},
    "cai.col.target": {"en": "Deployment target", "ja": "デプロイメントターゲット"},
    "cai.col.variant": {"en": "Variant", "ja": "バリアント"},
    "cai.col.size": {"en": "Size", "ja": "サイズ"},
    "cai.col.top1": {"en": "Top-1 (95% interval)", "ja": "Top-1（95% 区間）"},
    "cai.col.change": {"en": "Change vs FP32 (95% interval)", "ja": "FP32 との差（95% 区間）"},
    "cai.images": {"en": "on {n} test images", "ja": "（テスト画像 {n} 枚）"},
    "cai.col.problems": {"en": "Conversion problems", "ja": "変換の問題"},
    "cai.col.oracle": {"en": "Two runtimes on the same weights", "ja": "同じ重みでの 2 つのランタイム"},
    "cai.row.coreml": {"en": "Core ML package (.mlpackage), {target} or later",
                       "ja": "Core ML パッケージ（.mlpackage）、{target} 以降"},
    "cai.row.coreai": {"en": "Core AI model (.aimodel), iOS / macOS {min_os} or later",
                       "ja": "Core AI モデル（.aimodel）、iOS / macOS {min_os} 以降"},
    "cai.outside": {"en": "{name} (closest; outside the budget)", "ja": "{name}（最も近い候補。許容条件外）"},
    "cai.none_variant": {"en": "no variant measured", "ja": "測定したバリアントなし"},
    "cai.no_problems": {"en": "none recorded", "ja": "記録なし"},
    "cai.problems.refused": {"en": "{n} recipe(s) refused: {names}", "ja": "{n} 件のレシピが拒否されました：{names}"},
    "cai.problems.failed": {"en": "{n} recipe(s) failed: {names}", "ja": "{n} 件のレシピが失敗しました：{names}"},
    "cai.problems.no_oracle": {
        "en": "{n} compressed model(s) measured without the runtime comparison, because coremltools could not convert "
              "coreai-opt's Core ML export of this model: {names}",
        "ja": "{n} 件の圧縮モデルは、coremltools が coreai-opt の Core ML 書き出しを変換できなかったため、ランタイム間の比較なしで"
              "測定しました：{names}"},
    "cai.problems.skipped_layers": {"en": "{name}: some layers were left uncompressed (see the messages below)",
                                    "ja": "{name}：一部のレイヤーは圧縮されませんでした（下のメッセージを参照）"},
    "cai.oracle": {
        "en": "{name}: top-1 agreement {agree}, max relative error {err} on {n} images ({verdict})",
        "ja": "{name}：top-1 一致率 {agree}、最大相対誤差 {err}（{n} 枚、{verdict}）"},
    "cai.oracle.passed": {"en": "agree", "ja": "一致"},
    "cai.oracle.failed": {"en": "DISAGREE", "ja": "不一致"},
    "cai.oracle.none": {"en": "not measured", "ja": "未測定"},
    "cai.oracle_note": {
        "en": "Two runtimes on the same weights: each coreai-opt compression was also converted to Core ML from the "
              "same prepared weights; Apple's Core AI runtime ran the .aimodel and the playbook's reference executor "
              "ran the .mlpackage on the test images. Agreement checks the executor against Apple's own "
              "implementation; it says nothing about a device's speed.",
        "ja": "同じ重みでの 2 つのランタイム：coreai-opt の各圧縮は同じ準備済みの重みから Core ML にも変換しています。"
              "テスト画像で .aimodel を Apple の Core AI ランタイムが、.mlpackage をプレイブックの参照実行系が"
              "実行しました。一致率は参照実行系を Apple 自身の実装と照合するもので、デバイスでの速度については何も"
              "示しません。"},
    "cai.latency_note": {
        "en": "Core AI latencies in this report come from coreai-core's runtime on the machine that ran stage 02 (on "
              "Linux a single-threaded interpreter). They are labelled host-interpreter figures and never rank "
              "variants or meet a latency budget; measure on a device running iOS / macOS {min_os}.",
        "ja": "このレポートの Core AI のレイテンシは、ステージ 02 を実行したマシン上の coreai-core ランタイム"
              "（Linux ではシングルスレッドのインタープリタ）で測ったものです。ホストのインタープリタの値と明記し、"
              "バリアントの順位付けやレイテンシの許容条件の判定には使いません。iOS / macOS {min_os} のデバイスで測定して"
              "ください。"},
    "cai.messages": {"en": "Messages recorded by the Core AI tools (in English)",
                     "ja": "Core AI ツールが記録したメッセージ（英語）"},
    "cai.absent": {
        "en": "No Core AI variants were made, so only Core ML packages can be delivered: {why}",
        "ja": "Core AI のバリアントは作られていないため、届けられるのは Core ML パッケージだけです：{why}"},
    "cai.absent.not_run": {
        "en": "the quantization stage's record does not say (it was made before Core AI variants existed, or stage "
              "02 has not run); re-run stage 02 with coreai=True and Apple's coreai-* packages installed",
        "ja": "量子化ステージの記録に情報がありません（Core AI 対応前の記録か、ステージ 02 が未実行）。Apple の "
              "coreai-* パッケージを入れて coreai=True でステージ 02 を再実行してください"},
    "cai.absent.recorded": {"en": "the quantization stage recorded why (in English):",
                            "ja": "量子化ステージが記録した理由（英語）："},
    "cai.swift_coreml": {"en": "Swift for the Core ML package ({name})", "ja": "Core ML パッケージ（{name}）の Swift"},
    "cai.swift_in_deliverables": {"en": "{name} is this report's deliverable, so its Swift is printed once, in",
                                  "ja": "{name} はこのレポートの成果物なので、Swift は次の節に 1 度だけ載せています："},
    "cai.swift_coreai": {"en": "Swift for the Core AI model ({name})", "ja": "Core AI モデル（{name}）の Swift"},
    "cai.swift_coreai_note": {
        "en": "Written from Apple's Core AI documentation (AIModel, loadFunction(named:), NDArray, "
              "InferenceFunction.run(inputs:)); not compiled here, and the framework is in beta: check it against "
              "the current SDK.",
        "ja": "Apple の Core AI ドキュメント（AIModel、loadFunction(named:)、NDArray、InferenceFunction.run(inputs:)）"
              "をもとに書いたもので、ここではコンパイルしていません。フレームワークはベータ版なので、最新の SDK と"
              "照らし合わせてください。"},
    "cai.swift_coreml_note": {
        "en": "Input and output names and types are read from the package itself; not compiled here.",
        "ja": "入出力の名前と型はパッケージ自体から読み取っています。ここではコンパイルしていません。"},
    "where.coreai_host": {
        "en": "the .aimodel run by coreai-core's Core AI runtime on this host's CPU ({device}; on Linux a "
              "single-threaded interpreter): a host-interpreter figure, not an Apple device",
        "ja": "このホスト CPU 上で coreai-core の Core AI ランタイムが .aimodel を実行（{device}。Linux では"
              "シングルスレッドのインタープリタ）。ホストのインタープリタの値で、Apple デバイスではありません"},
    "where.coreai_host_short": {"en": "host interpreter (Core AI runtime), not an Apple device",
                                "ja": "ホストのインタープリタ（Core AI ランタイム）。Apple デバイスではない"},
    "prov.coreai": {"en": "{axis}: Apple's Core AI runtime (coreai-core){device}{what}",
                    "ja": "{axis}：Apple の Core AI ランタイム（coreai-core）{device}{what}"},
    "prov.coreai_host": {
        "en": "{axis}: Apple's Core AI runtime (coreai-core){device}, a host-interpreter figure, never used to choose "
              "a variant{what}",
        "ja": "{axis}：Apple の Core AI ランタイム（coreai-core）{device}。ホストのインタープリタの値で、順位付けには"
              "使いません{what}"},
    "prov.size_aimodel": {"en": "size: bytes of the .aimodel folder's files on disk; download size zipped with DEFLATE",
                          "ja": "サイズ：ディスク上の .aimodel フォルダのファイルのバイト数。ダウンロードサイズは DEFLATE で圧縮した値"},
    "tag.coreai": {"en": "Core AI, iOS / macOS 27+", "ja": "Core AI、iOS / macOS 27 以降"},
    "cai.docs": {"en": "Apple's documentation", "ja": "Apple のドキュメント"},
}
