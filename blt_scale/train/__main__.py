from blt_scale.train.run import main

main()
