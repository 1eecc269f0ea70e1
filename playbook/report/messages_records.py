"""The report's messages for what a variant is (written from its record), for text the stages record in English
(pitfalls, provenance phrases), for the
device-benchmark subsection and for the index page, in English and Japanese side by side; merged into
``messages.MESSAGES`` (kept apart so neither file grows past the project's module size)."""
from __future__ import annotations

RECORD_MESSAGES: dict[str, dict[str, str]] = {
    # ---- what a variant is (Japanese report; the English one shows the recipe's own description)
    "tech.quantization": {"en": "{bits}-bit integer weights", "ja": "{bits} ビット整数への重みの量子化"},
    "tech.palettization": {"en": "{bits}-bit palettized weights ({values}-entry lookup table)",
                           "ja": "{bits} ビットのパレタイズ（重みを {values} 個の値のルックアップテーブルで表現）"},
    "tech.pruning": {"en": "pruned weights", "ja": "枝刈り（小さな重みを 0 にして疎な形式で保存）"},
    "tech.joint": {"en": "pruning and palettization together", "ja": "枝刈りとパレタイズの複合圧縮"},
    "tech.pruning-share": {"en": "{pct}% of the weights set to zero by magnitude, stored sparse",
                           "ja": "大きさの小さい順に重みの {pct}% を 0 にして疎な形式で保存する枝刈り"},
    "tech.pruning-n-m": {"en": "{n}:{m} structured sparsity: the {n} smallest of every {m} consecutive weights zero",
                         "ja": "{n}:{m} 構造化スパース（連続する {m} 個の重みのうち小さな {n} 個を 0 にして疎な形式で保存）"},
    "tech.then-quantized": {"en": ", then the survivors as {dtype} after conversion (joint compression)",
                            "ja": "。変換後、残った重みを {dtype} で表現（複合圧縮）"},
    "tech.per-block": {"en": ", one scale per block of up to {n} input channels",
                       "ja": "、入力チャネル最大 {n} 個のブロックごとに 1 つのスケール"},
    "tech.grouped-palette": {"en": ", one palette per group of up to {n} output channels",
                             "ja": "、出力チャネル最大 {n} 個のグループごとに 1 つのパレット"},
    "tech.affine": {"en": ", with a zero point per tensor (affine)", "ja": "、テンソルごとのゼロ点つき（アフィン）"},
    "tech.equalized": {"en": ", after BatchNorm folding and cross-layer equalization",
                       "ja": "、BatchNorm を畳み込みに統合し層間イコライゼーションを行った後"},
    "tech.activation-quantization": {"en": "8-bit weights and activations (W8A8)",
                                     "ja": "重みと活性化の 8 ビット量子化（W8A8）"},
    "tech.data-aware": {"en": "compression with calibration or fine-tuning data",
                        "ja": "データを使う圧縮（キャリブレーションまたは再学習）"},
    "tech.precision": {"en": "a change of compute precision", "ja": "演算精度の変更"},
    "tech.fp32": {"en": "FP32 ML program", "ja": "FP32 の ML プログラム（比較の基準）"},
    "tech.fp16": {"en": "FP16 ML program", "ja": "FP16 の ML プログラム（標準の Core ML 書き出し）"},
    "tech.coreai.float": {"en": "the trained model as a Core AI model, {precision} (coreai-torch)",
                          "ja": "学習済みモデルをそのまま Core AI モデルに（{precision}、coreai-torch）"},
    "tech.coreai.int8": {"en": "coreai-opt Quantizer, int8 weights per channel (symmetric), weight-only",
                         "ja": "coreai-opt の Quantizer：重みをチャネルごとに int8（対称）、重みのみ"},
    "tech.coreai.int4": {"en": "coreai-opt Quantizer, int4 weights per channel (symmetric), weight-only",
                         "ja": "coreai-opt の Quantizer：重みをチャネルごとに int4（対称）、重みのみ"},
    "tech.coreai.palette4": {"en": "coreai-opt KMeansPalettizer, 4-bit palette per group of 16 output channels",
                             "ja": "coreai-opt の KMeansPalettizer：出力チャネル 16 個ごとに 4 ビットのパレット"
                                   "（16 で割り切れない層は浮動小数点のまま）"},
    "tech.coreai.prune50": {"en": "coreai-opt MagnitudePruner, 50 % of each weight zeroed by magnitude, no fine-tune",
                            "ja": "coreai-opt の MagnitudePruner：各重みの 50 % を大きさの順にゼロに（再学習なし）"},
    "tech.keep": {"en": ", its {n} most damaging layers kept float", "ja": "、影響の大きい {n} 層は浮動小数点のまま"},
    "tech.keep-one": {"en": ", its most damaging layer kept float", "ja": "、影響の最も大きい 1 層は浮動小数点のまま"},
    "tech.mixed-bits": {"en": "a palette size per layer (from {choices} bits), chosen on validation images from each "
                               "layer's measured damage, within {share}% of the accuracy budget",
                        "ja": "層ごとに異なるパレットサイズ（{choices} ビットから選択）。各層の測定した影響をもとに検証画像で選び、"
                              "許容低下幅の {share}% 以内に収める"},
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
    "tech.per-channel-palette": {"en": ", one palette per output channel", "ja": "（出力チャネルごとに 1 つのパレット）"},
    "tech.algo.dkm-mixed": {"en": "the per-layer palette sizes {source} chose, learned while fine-tuning (DKM)",
                            "ja": "{source} が選んだ層ごとのパレットサイズを、微分可能 k-means（DKM）で再学習しながら学ぶ"},
    "tech.algo.ptq": {"en": "{bits}-bit integer weights quantized in PyTorch", "ja": "PyTorch 側での {bits} ビット整数への重みの量子化"},
    "tech.algo.gptq": {"en": "{bits}-bit integer weights chosen by GPTQ from calibration images",
                       "ja": "キャリブレーション画像から GPTQ で選んだ {bits} ビット整数の重み"},
    "tech.algo.gptq-nf": {"en": "{bits}-bit palettes of normal-float values scaled per output channel, each weight's "
                                "entry chosen by GPTQ from calibration images",
                          "ja": "出力チャネルごとにスケールした正規浮動小数点値の {bits} ビットパレット（各重みの値は"
                                "キャリブレーション画像から GPTQ で選択）"},
    "tech.algo.qat-weights": {"en": "{bits}-bit integer weights learned while fine-tuning (weight-only QAT)",
                              "ja": "再学習しながら学ぶ {bits} ビット整数の重み（重みのみの量子化認識学習）"},
    "tech.lr": {"en": ", at a learning rate of {lr}", "ja": "、学習率 {lr}"},
    "tech.no-early-stop": {"en": ", every step run (no early stop)", "ja": "、早期終了なしで全ステップを実行"},
    "tech.steps-factor": {"en": ", for {factor} times the stage's fine-tune steps",
                          "ja": "、ステージの再学習ステップ数の {factor} 倍"},
    "tech.algo.sparsegpt": {"en": "{sparsity}% of the weights zero, chosen by SparseGPT from calibration images, then "
                                  "fine-tuned with the zeros kept",
                            "ja": "キャリブレーション画像から SparseGPT で選んだ {sparsity}% の重みをゼロにし、ゼロを保った"
                                  "まま再学習"},
    "tech.sequential": {"en": ", one layer at a time in the order the network runs them, each from the inputs the "
                              "layers compressed before it give",
                        "ja": "（ネットワークが実行する順に 1 層ずつ、先に圧縮した層の出力を入力として使用）"},
    "tech.bias": {"en": "; biases then corrected on {images} calibration images",
                  "ja": "。その後 {images} 枚のキャリブレーション画像でバイアスを補正"},
    "tech.stopped": {"en": "; the fine-tune stopped after {run} of {planned} steps, when its agreement with FP32 on "
                           "{images} validation images had not risen for {patience} checks (weights from step {best})",
                     "ja": "。検証画像 {images} 枚での FP32 との一致率が {patience} 回続けて上がらなかったため、再学習は "
                           "{planned} ステップ中 {run} ステップで終了（重みはステップ {best} のもの）"},
    "tech.then-int8": {"en": "; grouped (depthwise) convolutions as int8 after conversion",
                       "ja": "。グループ（depthwise）畳み込みは変換後に int8"},
    "tech.algo.ptp": {"en": "{bits}-bit k-means palettes fitted in PyTorch after cross-layer equalization",
                      "ja": "層間イコライゼーションの後に PyTorch 側で当てはめた {bits} ビットの k-means パレット"},
    "tech.then-palette": {"en": ", then the survivors on a {bits}-bit palette after conversion (joint compression)",
                          "ja": "。変換後、残った重みを {bits} ビットのパレットで表現（複合圧縮）"},
    "tech.student": {"en": "distilled {student} student ({params} parameters, {ratio} of the teacher), FP16, uncompressed",
                     "ja": "蒸留した {student} 生徒モデル（パラメータ {params}、教師の {ratio}）、FP16、非圧縮"},
    "tech.student-short": {"en": "a distilled {student} student with {what}", "ja": "蒸留した {student} 生徒モデル（{what}）"},
    "tech.student-compressed": {"en": "distilled {student} student compressed with {recipe}: {what}",
                                "ja": "蒸留した {student} 生徒モデルを {recipe} で圧縮：{what}"},
    "tech.family": {"en": "{family} ({knobs}) trained with the baseline's config for {epochs} epoch(s) at peak lr {lr}, "
                          "FP16 ML program",
                    "ja": "{family}（{knobs}）をベースラインの設定で {epochs} エポック学習（最大学習率 {lr}）、FP16 の ML プログラム"},
    "tech.family-steps": {"en": "{family} ({knobs}) trained with the baseline's config for {steps} steps at peak lr "
                                "{lr}, FP16 ML program",
                          "ja": "{family}（{knobs}）をベースラインの設定で {steps} ステップ学習（最大学習率 {lr}）、FP16 の ML "
                                "プログラム"},

    # ---- pitfalls the stages record in English, written again in the report's language (report/pitfalls.py)
    "pit.temperature.title": {"en": "wrong temperature: T = {bad} costs {cost} points against T = {good}",
                              "ja": "温度の選択ミス：T = {bad} は T = {good} より {cost} ポイント低い"},
    "pit.temperature.detail": {
        "en": "validation top-1 {bad_acc}% at T = {bad} vs {good_acc}% at T = {good} (scratch {scratch}%; alpha = "
              "{alpha}, one seed, {images} training images): sweep T on validation data for each teacher-student pair",
        "ja": "検証 top-1 は T = {bad} で {bad_acc}%、T = {good} で {good_acc}%（単独学習 {scratch}%、alpha = {alpha}、"
              "シード 1 つ、学習画像 {images} 枚）。教師と生徒の組ごとに検証データで T を探索してください"},
    "pit.seeds.title": {"en": "distillation's gain is small or not established over seeds",
                        "ja": "蒸留の効果は小さいか、複数シードで確認できていません"},
    "pit.seeds.detail": {
        "en": "gain {mean} ± {sd} points (mean ± standard deviation) over {n} seeds, paired t-test p = {p}",
        "ja": "効果は {n} シードで {mean} ± {sd} ポイント（平均 ± 標準偏差）、対応のある t 検定の p 値 = {p}。"
              "結論の前にシード数・エポック数を増やすか、温度や特徴量の項（beta）を変えて試してください"},
    "pit.student_hurt.title": {"en": "{recipe} hurts the small student more than the teacher",
                               "ja": "{recipe} は教師より小さな生徒モデルの精度を大きく下げます"},
    "pit.student_hurt.detail": {
        "en": "{student} points on the student against {teacher} on the teacher",
        "ja": "生徒で {student} ポイント、教師で {teacher} ポイント。小さなネットワークは冗長性が少ないため、生徒には "
              "8 ビットの重み（recipe='int8-weights'）を試してください"},
    "pit.student_big.title": {"en": "the student is more than 1/5 of the teacher",
                              "ja": "生徒モデルが教師の 1/5 より大きい"},
    "pit.student_big.detail": {"en": "{student} vs {teacher} parameters ({ratio})",
                               "ja": "パラメータ数 {student} 対 {teacher}（{ratio}）。サイズの削減は蒸留ではなく主に圧縮による"
                                     "ものです"},
    "pit.overcompression.title": {"en": "over-compression: {names} {what}", "ja": "圧縮のしすぎ：{names} は{what}"},
    "pit.overcompression.free": {"en": "collapse without data", "ja": "データなしの圧縮で精度が崩れます"},
    "pit.overcompression.data": {"en": "collapse", "ja": "精度が崩れます"},
    "pit.coverage.title": {"en": "{name} compressed only {done} of {expected} weights",
                           "ja": "{name} が圧縮したのは {expected} 個中 {done} 個の重みだけです"},
    "pit.coverage.detail": {
        "en": "its package is {ratio}x smaller than FP32, not what its recipe promises{why}; its size and accuracy are "
              "those of a model with only {n} weight(s) compressed",
        "ja": "パッケージは FP32 の {ratio} 分の 1 で、レシピが想定する大きさではありません{why}。サイズと精度は、"
              "{n} 個の重みだけを圧縮したモデルのものです"},
    "pit.coverage.why": {"en": "; some layers are subclasses of torch layer types, which the compressor did not see",
                         "ja": "。一部の層は torch のレイヤー型のサブクラスで、圧縮器から見えずに浮動小数点のまま残りました"},
    "pit.overcompression.far": {"en": "lose far more than the budget", "ja": "許容低下幅を大きく超えて精度が落ちます"},
    "pit.overcompression.detail_data": {
        "en": "{figures}; more fine-tuning steps, a lower target, or layer exceptions",
        "ja": "{figures}。微調整のステップを増やす、圧縮を弱める、一部の層を圧縮しない、のいずれかを試してください"},
    "pit.overcompression.detail": {
        "en": "{figures}",
        "ja": "{figures}。このモデルには強すぎる圧縮です。学習時の手法（DKM のパレット、段階的な枝刈り）や層ごとの"
              "ビット幅を試してください"},
    "pit.threshold.title": {"en": "weight_threshold={threshold}: {n} weight tensor(s) stay uncompressed on the Core ML side",
                            "ja": "weight_threshold={threshold}：Core ML 側で {n} 個の重みテンソルが非圧縮のまま"},
    "pit.threshold.detail": {
        "en": "{layers}; coremltools' default (2048) would leave {left} of {total} weights of this small model "
              "uncompressed",
        "ja": "{layers}。coremltools の既定値（2048）では、この小さなモデルの重み {total} 個のうち {left} 個が"
              "非圧縮のまま残ります"},
    "pit.block.title": {"en": "{name}: some weights were skipped or got an adapted block size",
                        "ja": "{name}：一部の重みは圧縮されないか、ブロックサイズを調整しました"},
    "pit.block.detail": {"en": "{items} ({n} weights compressed)", "ja": "{items}（圧縮した重みは {n} 個）"},
    "pit.student_size.title": {"en": "the shipped student misses min_size_ratio={want}",
                               "ja": "出荷する生徒モデルが min_size_ratio={want} に届きません"},
    "pit.student_size.detail": {
        "en": "{ratio}x smaller than the teacher's FP32 package: {size} KB measured against {predicted} KB predicted",
        "ja": "教師の FP32 パッケージの {ratio} 分の 1：実測 {size} KB、教師でのレシピの圧縮率からの予測 {predicted} KB。"
              "小さなネットワークは重みあたりのビット数が多く残ります（層の冗長性が小さく、ルックアップテーブルと小さな"
              "テンソルの比重が大きい）。幅を下げてください"},
    "pit.no_allocation.title": {"en": "{name}: no allocation met {budget} points on validation",
                                "ja": "{name}：検証データで {budget} ポイント以内に収まる割り当てがありません"},
    "pit.no_allocation.detail": {
        "en": "not even the widest palette on every layer met it; the variant written is that widest allocation "
              "(raise max_top1_drop or keep some layers in float)",
        "ja": "全層を最も広いパレットにしても収まりませんでした。書き出したのはその最も広い割り当てです"
              "（max_top1_drop を上げるか、一部の層を浮動小数点のまま残してください）"},
    "pit.batchnorm.title": {"en": "batch_norm op(s) left in {where}", "ja": "{where}に batch_norm 演算が残っています"},
    "pit.batchnorm.n": {"en": "{n} programs", "ja": "{n} 個のプログラム"},
    "pit.batchnorm.one": {"en": "the program of {name}", "ja": "{name} のプログラム"},
    "pit.batchnorm.detail": {
        "en": "{counts}; the converted program applies BatchNorm as separate ops after the compressed convolutions",
        "ja": "{counts}。変換後のプログラムは BatchNorm を畳み込みの重みに畳み込まず、圧縮した畳み込みの後に別の演算として"
              "実行します（FP32・FP16 の書き出しでは 0 個）。1 層ごとに演算が 1 つ増えます"},
    "pit.dkm_slow.title": {"en": "{name}: DKM fine-tuning is slow on a CPU", "ja": "{name}：DKM の再学習は CPU では遅い"},
    "pit.dkm_slow.detail": {
        "en": "{seconds} s for {steps} steps ({per} s per step of {batch} images on this machine)",
        "ja": "{steps} ステップに {seconds} 秒（このマシンで {batch} 枚の 1 ステップあたり {per} 秒）。GPU があれば "
              "train.fit は GPU で実行します（device='auto'）。または finetune_steps を減らしてください"},
    "pit.target.title": {"en": "{n} recipe(s) needed a newer deployment target",
                         "ja": "{n} 個のレシピで新しいデプロイメントターゲットが必要でした"},
    "pit.target.detail": {
        "en": "{names} were re-exported at {target}: these packages load only on {ios} / {macos} or later (an app "
              "that supports older systems can use them behind `if #available({ios}, {macos}, *)`)",
        "ja": "{names} は {target} で書き出し直しました。これらのパッケージは {ios} / {macos} 以降でのみ読み込めます"
              "（古い OS にも対応するアプリでは、@available で新しい OS のときだけこのモデルを使う形にできます）"},
    "pit.w8a8_macos.title": {"en": "W8A8 on the Core ML model needs macOS",
                             "ja": "Core ML モデルでの W8A8 には macOS が必要"},
    "pit.w8a8_macos.detail": {
        "en": "ct.optimize.coreml.linear_quantize_activations calibrates by running Core ML predictions",
        "ja": "ct.optimize.coreml.linear_quantize_activations は Core ML で推論してキャリブレーションするため macOS "
              "でしか動きません。ここの W8A8 レシピは PyTorch 側（LinearQuantizer）で量子化してから変換しています"},
    "pit.noisy.title": {"en": "noisy timings: {n} of {total} measurements have p90 above twice the median",
                        "ja": "計測のばらつき：{total} 件中 {n} 件で p90 が中央値の 2 倍を超えています"},
    "pit.noisy.detail": {
        "en": "worst: {name} with {setting}, p90 {p90} ms vs median {median} ms (CV {cv})",
        "ja": "最大は {name}（{setting}）で、p90 {p90} ms、中央値 {median} ms（変動係数 {cv}）。計測中に他の処理が"
              "このマシンを使っていました。中央値だけを比べ、数 % の差を信じる前に空いたマシンで測り直してください"},
    "pit.not_here.title": {"en": "{settings}: not measured here", "ja": "{settings}：ここでは測定していません"},
    "pit.not_here.macos": {
        "en": "needs macOS: coremltools runs Core ML predictions only on macOS (this is {os})",
        "ja": "macOS が必要です。coremltools が Core ML で推論できるのは macOS だけです（このマシンは {os}）。Mac では "
              "playbook bench、iPhone では生成した Swift ベンチマークで測定し、playbook import-bench で取り込んでください"},
    "pit.not_here.cuda": {"en": "no CUDA device visible to {torch} on this machine",
                          "ja": "このマシンでは {torch} から CUDA デバイスが見えません"},
    "pit.threads.title": {"en": "more threads were slower on this host", "ja": "このホストではスレッドを増やすと遅くなりました"},
    "pit.threads.detail": {
        "en": "{name}: {n} threads {multi} ms vs 1 thread {one} ms median",
        "ja": "{name}：{n} スレッドで {multi} ms、1 スレッドで {one} ms（中央値）。2 コアを他の処理と共有するマシンでは、"
              "この差には他の処理との CPU の取り合いが含まれます。空いたマシンで測り直すまで、スレッド数の効果とは"
              "判断できません"},
    "pit.placement.detail": {
        "en": "MLComputePlan needs macOS {version} or later; this is {os}",
        "ja": "MLComputePlan には macOS {version} 以降が必要です（Core ML がモデルをコンパイルして実行計画を立てます）。"
              "このマシンは {os} で、coremltools を読み込めても実行はできません"},
    "pit.diverged.title": {"en": "{name}: training diverged at peak lr {lr}",
                           "ja": "{name}：最大学習率 {lr} で学習が発散しました"},
    "pit.diverged.detail": {
        "en": "training loss per epoch [{losses}] ends at chance (ln {k} = {chance}), test top-1 {top1}%; the network has "
              "{bn} BatchNorm layer(s)",
        "ja": "エポックごとの学習損失 [{losses}] は当て推量の値（ln {k} = {chance}）で終わり、テスト top-1 は {top1}% です。"
              "このネットワークの BatchNorm 層は {bn} 個です。学習量をそろえると最適化の設定も共通になるため、この"
              "ファミリーには専用の最大学習率（family_lr）を与えて再実行してください"},
    "pit.pretrained.title": {"en": "a pretrained ImageNet network is not a free swap for a small-image task",
                             "ja": "ImageNet で事前学習したネットワークは、小さな画像の課題にそのまま置き換えられません"},
    "pit.pretrained.detail": {
        "en": "{name} needs {macs} MACs per {px} image ({times}x the baseline's {base}) and {params} parameters",
        "ja": "{name} は {px} の画像 1 枚に {macs} MACs（ベースライン {base} の {times} 倍）、パラメータ {params} を"
              "必要とします。重みは 224 px の RGB 写真を前提としているため、この課題の画像を拡大し、分類器を学習し直す"
              "必要があります"},
    "pit.block.item": {"en": "per_block: block_size {block} does not divide the {channels} channels (axis {axis}) of "
                             "{weight}; used {used}",
                       "ja": "{weight} はチャネル数 {channels}（軸 {axis}）が block_size {block} で割り切れないため {used} "
                             "を使用"},
    "pit.macs.table": {
        "en": "{cheap} has fewer MACs ({cheap_macs}) than {costly} ({costly_macs}) but was slower on the reference "
              "executor ({cheap_ms} vs {costly_ms} ms, as its stage measured); the table's best figures are "
              "{cheap_table} and {costly_table} ms. On a device the ranking can differ again: measure on the target",
        "ja": "{cheap} は {costly} より MACs が少ない（{cheap_macs} 対 {costly_macs}）のに、ステージが測ったリファレンス"
              "実行系では遅くなりました（{cheap_ms} ms 対 {costly_ms} ms）。表の値（最も信頼できる測定）は {cheap_table} ms と "
              "{costly_table} ms です。デバイス上では順位がさらに変わりうるため、対象デバイスで測定してください"},
    "phrase.memory": {"en": "rise of peak RSS of a fresh process forked after imports ({base}) while loading the "
                            "package and predicting one input",
                      "ja": "ライブラリ読み込み後に fork した新しいプロセス（{base}）で、パッケージを読み込み 1 枚推論した"
                            "ときの常駐メモリのピークの増加分"},
    "phrase.energy": {"en": "no readable energy counter on this platform (Linux RAPL absent or restricted)",
                      "ja": "このプラットフォームには読み取れるエネルギーカウンタがありません（Linux の RAPL がないか、"
                            "読み取りが制限されています）。macOS では powermetrics、デバイスでは Xcode のエネルギー"
                            "ゲージを使ってください"},
    "pit.macs.title": {"en": "MACs do not predict latency", "ja": "積和演算数（MACs）ではレイテンシを予測できません"},
    "pit.macs.detail": {
        "en": "{cheap} has fewer MACs ({cheap_macs}) than {costly} ({costly_macs}) but a higher host latency "
              "({cheap_ms} vs {costly_ms} ms)",
        "ja": "{cheap} は {costly} より MACs が少ない（{cheap_macs} 対 {costly_macs}）のに、ホストでのレイテンシは"
              "高くなっています（{cheap_ms} ms 対 {costly_ms} ms）。デバイス上では順序が変わることがあります"},
    "pit.scan.title": {"en": "{name}: the scan predicts ops off the Neural Engine",
                       "ja": "{name}：Neural Engine で実行されない演算があると静的スキャンが予測しています"},
    "pit.placement.title": {"en": "placement on the Neural Engine is predicted, not measured",
                            "ja": "Neural Engine での実行先は予測であり、測定ではありません"},
    "pit.unmatched.title": {"en": "the budget is not matched with the baseline",
                            "ja": "学習量がベースラインとそろっていません"},
    "pit.unmatched.detail": {
        "en": "families trained {epochs} epoch(s), the baseline {base}",
        "ja": "各ファミリーは {epochs} エポック、ベースラインは {base} エポック学習しました。差にはアーキテクチャと"
              "学習期間の両方の影響が混ざっています"},
    "pit.unmatched.detail_steps": {
        "en": "families trained {epochs} epoch(s), the baseline {base} steps",
        "ja": "各ファミリーは {epochs} エポック、ベースラインは {base} ステップ学習しました。差にはアーキテクチャと"
              "学習期間の両方の影響が混ざっています"},
    "pit.no_fit.title": {"en": "{name}: the architecture does not fit the task at this budget",
                         "ja": "{name}：この学習量ではアーキテクチャが課題に合っていません"},
    "pit.no_fit.detail": {
        "en": "top-1 {top1}% vs {best}% for the best family at {params} parameters and {macs} MACs",
        "ja": "top-1 は {top1}%（最良のファミリーは {best}%）、パラメータ {params}、MACs {macs}。ファミリーの設計"
              "（早い段階でのプーリング、fire モジュールなど）は、パラメータ数から想像する以上に精度を下げることがあります"},
    "pit.spread.title": {
        "en": "why the data-free palettes and pruning collapse here: channels of very different widths in one tensor",
        "ja": "データなしのパレタイズと枝刈りがここで崩れる理由：1 つのテンソルに値の幅が大きく異なるチャネルがある"},
    "pit.spread.detail": {
        "en": "{n} of {total} compressed weight tensors have an output channel over 10x wider than their median channel",
        "ja": "圧縮した重みテンソル {total} 個のうち {n} 個で、値の幅が中央値のチャネルの 10 倍を超える出力チャネルが"
              "あります。1 つのパレットや 1 つのしきい値では、幅の狭いチャネルの値がつぶれます"},

    # ---- the device-benchmark subsection of the deliverables
    "dev.title": {"en": "Device benchmarks", "ja": "デバイスでのベンチマーク"},
    "dev.not_run": {"en": "stage 05 has not run, so every latency is the one its own stage measured (see the notes).",
                    "ja": "ステージ 05 を実行していないため、レイテンシはどれも各ステージ自身が測った値です（注を参照）。"},
    "dev.best": {"en": "the latency column shows the best available figure for each variant, in the order device, "
                       "host, reference executor ({counts}).",
                 "ja": "レイテンシの列には、各バリアントで最も信頼できる値を「実機 → ホスト → リファレンス実行系」の順に"
                       "選んで示しています（{counts}）。"},
    "dev.count": {"en": "{n} from the {tier}", "ja": "{tier} {n} 件"},
    "dev.tier.device": {"en": "device", "ja": "実機"},
    "dev.tier.host": {"en": "host CPU", "ja": "ホスト CPU"},
    "dev.tier.reference": {"en": "reference executor", "ja": "リファレンス実行系"},
    "dev.imports": {"en": "Imported results files:", "ja": "取り込んだ結果ファイル："},
    "dev.import_item": {"en": "{n} measurement(s) on {devices}, imported {when}",
                        "ja": "{devices} での測定 {n} 件（{when} に取り込み）"},
    "dev.no_device": {"en": "No latency in this report was measured on an Apple device (no Core ML measurement was made "
                            "or imported): the figures are the cost of the host's runtimes on its CPU. They neither "
                            "rank the variants for a device nor say how long an iPhone user waits.",
                      "ja": "このレポートのレイテンシには Apple のデバイスで測ったものがありません（Core ML での測定も"
                            "取り込みもありません）。数値はホストの CPU 上の実行コストであり、デバイス上の順位も、iPhone "
                            "の利用者の待ち時間も表しません。"},
    "dev.iphone_before": {"en": "To measure on an iPhone: ", "ja": "iPhone で測定するには："},
    "dev.iphone_after": {"en": " (generated from the packages' real inputs and outputs).",
                         "ja": "（各パッケージの実際の入出力から生成）を使います。"},
    "ios.step0": {"en": "Run `sh copy_models.sh` in reports/{model}/benchmark/ios/ (copies each .mlpackage under a "
                        "unique name into Models/).",
                  "ja": "reports/{model}/benchmark/ios/ で `sh copy_models.sh` を実行します（各 .mlpackage を重複しない"
                        "名前で Models/ にコピーします）。"},
    "ios.step1": {"en": "In Xcode, add PlaybookBenchmark.swift and the Models/*.mlpackage files to an iOS app target (or "
                        "a unit-test target hosted by the app); Xcode compiles each package into the bundle as .mlmodelc.",
                  "ja": "Xcode で PlaybookBenchmark.swift と Models/*.mlpackage を iOS アプリのターゲット（またはアプリを"
                        "ホストとする単体テストのターゲット）に追加します。各パッケージは Xcode がバンドル内の .mlmodelc "
                        "にコンパイルします。"},
    "ios.step2": {"en": "Run on a real iPhone, not the Simulator, and call `let json = await runPlaybookBenchmark()` "
                        "(e.g. from a SwiftUI .task or an async XCTest); keep the phone awake, on power, and the app in "
                        "the foreground.",
                  "ja": "シミュレータではなく実機の iPhone で実行し、`let json = await runPlaybookBenchmark()` を呼び出します"
                        "（SwiftUI の .task や非同期の XCTest などから）。計測中は iPhone をスリープさせず、電源につなぎ、"
                        "アプリを前面に表示したままにしてください。"},
    "ios.step3": {"en": "Copy the printed JSON (also saved as Documents/playbook-benchmark.json) to results.json on your "
                        "computer.",
                  "ja": "出力された JSON（Documents/playbook-benchmark.json にも保存されます）を、手元のコンピュータの "
                        "results.json にコピーします。"},
    "ios.step4": {"en": "Run `playbook import-bench results.json --model {model}`, then `playbook run --model {model} "
                        "--stages 06` to re-render the report with the device figures.",
                  "ja": "`playbook import-bench results.json --model {model}` を実行し、続けて "
                        "`playbook run --model {model} --stages 06` で実機の値を入れたレポートを作り直します。"},

    # ---- the index page
    "idx.lang_switch": {"en": "English", "ja": "日本語"},
    "idx.intro": {"en": "{n} model(s), {failed} failed, {interrupted} interrupted. Top-1, size and latency are those of "
                        "each model's recommended variant (or, when none meets the budget, the closest one); open a "
                        "report for intervals and for where each figure was measured. A latency measured on a host CPU "
                        "or by the reference executor is not a device's speed.",
                  "ja": "モデル {n} 件（失敗 {failed} 件、中断 {interrupted} 件）。top-1・サイズ・レイテンシは各モデルの推奨"
                        "バリアント（許容条件を満たすものがなければ最も近いもの）の値です。信頼区間と各数値の測定環境は"
                        "各レポートを開いて確認してください。ホスト CPU やリファレンス実行系で測ったレイテンシは実機の"
                        "速さではありません。"},
    "idx.model": {"en": "Model", "ja": "モデル"},
    "idx.status": {"en": "Status", "ja": "状態"},
    "idx.variant": {"en": "Recommended variant", "ja": "推奨バリアント"},
    "idx.top1": {"en": "Top-1 %", "ja": "top-1 %"},
    "idx.size": {"en": "Size MB", "ja": "サイズ MB"},
    "idx.latency": {"en": "Latency ms", "ja": "レイテンシ ms"},
    "idx.where": {"en": "Latency measured on", "ja": "レイテンシの測定環境"},
    "idx.finished": {"en": "Finished", "ja": "完了日時"},
    "idx.ok": {"en": "ok", "ja": "完了"},
    "idx.provisional": {"en": "provisional", "ja": "暫定"},
    "idx.none_meets": {"en": "no variant meets the budget", "ja": "許容条件を満たすものなし"},
    "idx.failed": {"en": "FAILED", "ja": "失敗"},
    "idx.interrupted": {"en": "INTERRUPTED", "ja": "中断"},
    "idx.smoke": {"en": " (smoke run)", "ja": "（スモーク実行）"},
    "idx.empty": {"en": "no model has been run yet", "ja": "まだ実行したモデルはありません"},
    "idx.where.reference": {"en": "reference executor (Linux CPU), not a device",
                            "ja": "リファレンス実行系（Linux CPU）。実機ではない"},
    "idx.where.torch": {"en": "host CPU (PyTorch), not a device", "ja": "ホスト CPU（PyTorch）。実機ではない"},
    "idx.where.coreml": {"en": "Core ML on a device", "ja": "実機の Core ML"},
}
