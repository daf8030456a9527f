"""Predict with a finished run: python scripts/predict.py run=<run folder> data.path=new.csv (the same as microtrain-predict)."""

from microtrain.cli import predict_main

if __name__ == "__main__":
    predict_main()
